// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Selects marked data-autosubmit submit their form on change (language, preview lead).
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Forms marked data-confirm ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });

  // The send button: one click sends one batch; the server's one-time key makes a
  // second submit harmless anyway, this only stops the double request.
  document.querySelectorAll("#send-now").forEach(function (button) {
    button.form.addEventListener("submit", function () {
      setTimeout(function () { button.disabled = true; }, 0);
    });
  });

  // Dashboard: refresh progress and the scheduler line every 5 s.
  var scheduler = document.getElementById("scheduler");
  if (scheduler && scheduler.dataset.live) {
    setInterval(function () {
      fetch(scheduler.dataset.live, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          scheduler.classList.toggle("ok", data.scheduler.fresh);
          scheduler.classList.toggle("bad", !data.scheduler.fresh);
          Object.keys(data.campaigns).forEach(function (id) {
            var row = document.querySelector('tr[data-campaign="' + id + '"]');
            var c = data.campaigns[id];
            if (!row) { return; }
            var bar = row.querySelector("progress");
            bar.max = c.total || 1; bar.value = c.sent;
            row.querySelector(".failed").textContent = c.failed;
            row.querySelector(".skipped").textContent = c.skipped;
          });
        })
        .catch(function () { /* offline: keep what is shown */ });
    }, 5000);
  }

  // Timeline: times default to the browser's zone. The server reads it from a cookie; a page
  // drawn before the cookie existed gets it for its zone selects now (an explicit ?tz= wins).
  var zone = window.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && document.querySelector("select[data-browser-zone]")) {
    document.cookie = "tz=" + encodeURIComponent(zone) + "; path=/; SameSite=Lax; max-age=31536000";
    if (!/[?&]tz=/.test(window.location.search)) {
      document.querySelectorAll("select[data-browser-zone]").forEach(function (select) {
        if (select.querySelector('option[value="' + zone + '"]')) { select.value = zone; }
      });
    }
  }

  // Timeline: new sends appear without a reload (the server renders the fragment).
  var body = document.getElementById("timeline-body");
  if (body && body.dataset.live) {
    setInterval(function () {
      fetch(body.dataset.live, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { body.innerHTML = html; } })
        .catch(function () { /* keep what is shown */ });
    }, 10000);
  }

  // Variant editor: live preview of the unsaved subject and body.
  var editor = document.getElementById("variant-form");
  if (editor) {
    var timer = null;
    var refresh = function () {
      var body = new FormData();
      body.append("subject", editor.querySelector("[name=subject]").value);
      body.append("body", editor.querySelector("[name=body]").value);
      fetch(editor.dataset.preview, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "X-CSRFToken": editor.querySelector("[name=csrf_token]").value }
      }).then(function (r) { return r.json(); }).then(function (p) {
        document.getElementById("preview-subject").textContent = p.subject || "";
        document.getElementById("preview-body").textContent = p.body || "";
        document.getElementById("preview-subject-error").textContent = p.subject_error || "";
        document.getElementById("preview-body-error").textContent = p.body_error || "";
      });
    };
    editor.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    });
  }
})();
