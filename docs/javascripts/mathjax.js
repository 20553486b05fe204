// MathJax reads only what pymdownx.arithmatex marked as math (class "arithmatex"),
// so a dollar sign or a backslash in ordinary text or code stays as written.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
