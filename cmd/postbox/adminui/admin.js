// postbox admin: the little the pages need beyond HTML. Everything works
// without it; it only refreshes the overview's figures and holds back the
// purge button until the subscriber's name is typed (the server checks it
// again).
(function () {
  "use strict";
  var figures = document.getElementById("overview");
  if (figures) {
    var every = parseInt(figures.getAttribute("data-every"), 10) || 5;
    setInterval(function () {
      fetch(figures.getAttribute("data-refresh"), { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
        .then(function (html) { figures.innerHTML = html; }) // rendered and escaped by the server
        .catch(function () {});
    }, every * 1000);
  }
  var typed = document.querySelector("input[data-must-equal]");
  var submit = document.getElementById("submit");
  if (typed && submit) {
    var check = function () { submit.disabled = typed.value !== typed.getAttribute("data-must-equal"); };
    typed.addEventListener("input", check);
    check();
  }
})();
