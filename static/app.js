// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Phones show each table row as a card: every cell gets its column's name as a label.
  document.querySelectorAll("table").forEach(function (table) {
    var names = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    table.querySelectorAll("tbody tr").forEach(function (row) {
      Array.prototype.forEach.call(row.children, function (cell, i) {
        if (names[i] && !cell.hasAttribute("data-label")) { cell.setAttribute("data-label", names[i]); }
      });
    });
  });

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

  // Dashboard and campaign page: refresh progress, its texts and the send times every 5 s.
  var set = function (box, selector, value) {
    box.querySelectorAll(selector).forEach(function (el) { el.textContent = value; });
  };
  var show = function (box, c) {
    var bar = box.querySelector("progress");
    if (bar) { bar.max = c.total || 1; bar.value = c.sent; }
    ["failed", "skipped", "stopped", "pending", "waiting", "sending"].forEach(function (k) { set(box, "." + k, c[k]); });
    set(box, ".waiting-text", c.waiting_text);
    box.querySelectorAll(".waiting-note").forEach(function (el) { el.hidden = !c.waiting; });
    set(box, "span.unknown", c.unknown);
    set(box, ".sent-count", c.sent_text);
    set(box, ".last-sent", c.last_sent);
    set(box, ".next-send", c.next_send);
  };
  var scheduler = document.getElementById("scheduler");
  var single = document.getElementById("campaign-live");
  var live = (scheduler && scheduler.dataset.live) || (single && single.dataset.live);
  var refreshLive = function () {
    if (!live) { return; }
    fetch(live, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        if (scheduler) {
          scheduler.classList.toggle("ok", data.scheduler.fresh);
          scheduler.classList.toggle("bad", !data.scheduler.fresh);
        }
        Object.keys(data.campaigns).forEach(function (id) {
          var box = single && single.dataset.campaign === id ? single
            : document.querySelector('tr[data-campaign="' + id + '"]');
          if (box) { show(box, data.campaigns[id]); }
        });
      })
      .catch(function () { /* offline: keep what is shown */ });
  };
  if (live) { setInterval(refreshLive, 5000); }

  // Campaign page: a "send now" request's progress, every second until it is done (the
  // server renders the fragment, so the page reads the same with JavaScript off on reload).
  var request = document.getElementById("send-request");
  if (request && request.dataset.live && request.dataset.state !== "done") {
    var seen = null;
    var poll = setInterval(function () {
      fetch(request.dataset.live, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var now = data.state + ":" + data.rows.length + ":" + data.sent;
          if (seen !== null && now !== seen) { refreshLive(); }  // the counts above move with it
          seen = now;
          request.innerHTML = data.html;
          request.dataset.state = data.state;  // (an attribute: a "sending" class would be a count's target)
          if (data.state === "done") { clearInterval(poll); }
        })
        .catch(function () { /* offline: keep what is shown */ });
    }, 1000);
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

  // Session expired: the draft goes with the person through a new login and is put back
  // into the same form afterwards (sessionStorage: this tab only, gone when it closes).
  var draft = document.getElementById("draft");
  var login = document.getElementById("login-again");
  if (draft && login) {
    login.addEventListener("click", function () {
      var fields = [];
      draft.querySelectorAll("[name]").forEach(function (el) {
        if (el.name !== "csrf_token") { fields.push([el.name, el.value]); }
      });
      sessionStorage.setItem("draft:" + draft.dataset.back,
                             JSON.stringify({ fields: fields, notice: draft.dataset.notice }));
    });
  }
  var key = "draft:" + location.pathname + location.search;
  var kept = !draft && sessionStorage.getItem(key);
  var target = kept && document.querySelector("main form[method=post]");
  if (target) {
    sessionStorage.removeItem(key);
    var saved = JSON.parse(kept);
    var values = {};
    saved.fields.forEach(function (pair) { (values[pair[0]] = values[pair[0]] || []).push(pair[1]); });
    target.querySelectorAll("[name]").forEach(function (el) {
      if (el.name === "csrf_token" || !(el.name in values)) { return; }
      if (el.type === "checkbox" || el.type === "radio") {
        el.checked = values[el.name].indexOf(el.value) >= 0;
      } else { el.value = values[el.name][0]; }
    });
    var notice = document.createElement("p");
    notice.className = "flash"; notice.setAttribute("role", "status"); notice.id = "draft-restored";
    notice.textContent = saved.notice;
    target.parentNode.insertBefore(notice, target);
  }

  // Variant editor: a merge field button inserts its field where the cursor was last.
  var lastField = document.querySelector("#variant-form [name=body]");
  document.querySelectorAll("#variant-form [name=subject], #variant-form [name=body]").forEach(function (el) {
    el.addEventListener("focus", function () { lastField = el; });
  });
  document.querySelectorAll("button[data-insert]").forEach(function (button) {
    button.addEventListener("click", function () {
      if (!lastField) { return; }
      var text = button.dataset.insert, at = lastField.selectionStart, end = lastField.selectionEnd;
      lastField.value = lastField.value.slice(0, at) + text + lastField.value.slice(end);
      lastField.focus();
      lastField.setSelectionRange(at + text.length, at + text.length);
      lastField.dispatchEvent(new Event("input", { bubbles: true }));
    });
  });

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
