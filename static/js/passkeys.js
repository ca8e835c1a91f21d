// Passkey registration glue around django-otp-webauthn's own script (otp_webauthn_register.js),
// which runs the ceremony. Plain ES2020, copied into static/ by frontend/build.mjs.
//
// The library's script posts no form data, so the name typed for the new passkey travels to
// the server as a short-lived cookie scoped to the registration-begin URL. The cookie is set
// in the "register_start" event, which the library dispatches synchronously on click before
// it makes that request; the server checks the name, keeps it with the ceremony and clears
// the cookie.
(function () {
  "use strict";

  const NAME_COOKIE = "a3_passkey_name";

  document.addEventListener("otp_webauthn.register_start", () => {
    const input = document.getElementById("passkey-name");
    if (!input) return;
    const path = input.dataset.cookiePath || "/";
    const secure = window.location.protocol === "https:" ? "; secure" : "";
    document.cookie =
      `${NAME_COOKIE}=${encodeURIComponent(input.value.trim())}; path=${path}; max-age=120; samesite=strict${secure}`;
  });

  // Registered: show the new passkey (the server queued a confirmation message), or go on
  // where the page was headed (enrolment during sign-in).
  document.addEventListener("otp_webauthn.register_complete", () => {
    const box = document.getElementById("passkey-registration");
    const target = box && box.dataset.doneUrl;
    if (target) {
      window.location.assign(target);
    } else {
      window.location.reload();
    }
  });
})();
