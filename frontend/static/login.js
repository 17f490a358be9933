// Login page: send the token once; the server keeps it in an HttpOnly cookie.
import { ApiError, api } from "./common.js";

const form = document.getElementById("login-form");
const message = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  message.hidden = true;
  try {
    await api("/api/login", {
      method: "POST",
      body: { token: document.getElementById("token").value },
      login: false,
    });
    // The server only renders local paths here; check again all the same.
    const next = new URL(form.dataset.next || "/", location.origin);
    location.assign(next.origin === location.origin ? next.href : "/");
  } catch (err) {
    message.textContent = err instanceof ApiError ? err.message : String(err);
    message.hidden = false;
  }
});
