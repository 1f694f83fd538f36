// Live progress of a running optimization: poll its figures, reload the page (for the
// full report) once the run is no longer running. Without script the page still shows
// the figures as of its loading.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var url = "/runs/" + encodeURIComponent(box.dataset.run) + "/progress.json";
  function show(data) {
    box.querySelectorAll("[data-field]").forEach(function (el) {
      var value = data[el.dataset.field];
      if (value === null || value === undefined) { value = "-"; }
      else if (el.dataset.field === "best_val_score") { value = Number(value).toFixed(3); }
      else if (el.dataset.field === "cost_usd") { value = "$" + Number(value).toFixed(4); }
      el.textContent = String(value);
    });
    if (data.status !== "running") { window.location.reload(); return false; }
    return true;
  }
  function poll() {
    fetch(url, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (!data || show(data)) { setTimeout(poll, 2000); } })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
