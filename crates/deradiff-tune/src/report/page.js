// deradiff report: filter the prompts by text, sort them by reward gain, and (with the URL
// fragment #selftest=TEXT) check that every image and figure loaded, then filter by TEXT and
// write the outcome into #selftest as JSON. No network, no library.
(function () {
  "use strict";
  var body = document.querySelector("#grid tbody");
  var rows = body ? Array.prototype.slice.call(body.rows) : [];
  var filter = document.getElementById("filter");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");

  function apply() {
    var q = filter ? filter.value.toLowerCase() : "";
    var n = 0;
    rows.forEach(function (r) {
      var ok = (r.getAttribute("data-prompt") || "").indexOf(q) !== -1;
      r.hidden = !ok;
      if (ok) n += 1;
    });
    if (shown) shown.textContent = n + " of " + rows.length + " prompt rows shown";
    return n;
  }

  function gain(r, key) {
    var v = parseFloat(r.getAttribute("data-gain-" + key));
    return isNaN(v) ? -Infinity : v;
  }

  function order() {
    if (!body) return;
    var key = sort ? sort.value : "";
    var sorted = rows.slice().sort(function (a, b) {
      var oa = Number(a.getAttribute("data-order")), ob = Number(b.getAttribute("data-order"));
      if (key === "") return oa - ob;
      var d = gain(b, key) - gain(a, key);
      return d !== 0 && !isNaN(d) ? d : oa - ob;
    });
    sorted.forEach(function (r) { body.appendChild(r); });
  }

  if (filter) filter.addEventListener("input", apply);
  if (sort) sort.addEventListener("change", order);
  apply();

  var m = /^#selftest=(.*)$/.exec(location.hash);
  if (!m) return;
  var text = decodeURIComponent(m[1]);
  var images = Array.prototype.slice.call(document.images);
  images.forEach(function (i) { i.loading = "eager"; });
  var waits = images.map(function (i) {
    if (i.complete) return Promise.resolve();
    return new Promise(function (done) {
      i.addEventListener("load", done);
      i.addEventListener("error", done);
    });
  });
  Promise.all(waits).then(function () {
    var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
      .map(function (i) { return i.getAttribute("src"); });
    if (filter) filter.value = text;
    var visible = apply();
    var sorted = null;
    if (sort && sort.options.length > 1) {
      sort.value = sort.options[1].value;
      order();
      sorted = Array.prototype.map.call(body.rows, function (r) { return Number(r.getAttribute("data-order")); });
    }
    var out = {
      ok: broken.length === 0,
      images: images.length,
      plots: document.querySelectorAll("img.plot").length,
      broken: broken,
      filter: text,
      visible: visible,
      total: rows.length,
      visible_rows: rows.filter(function (r) { return !r.hidden; })
        .map(function (r) { return Number(r.getAttribute("data-order")); }),
      sorted_by_first_gain: sorted
    };
    var el = document.getElementById("selftest");
    el.textContent = JSON.stringify(out);
    el.hidden = false;
  });
})();
