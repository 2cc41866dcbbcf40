/* plotly.js (about 5 MB) is in the page as text: handed to the browser as a blob: script it compiles off
   the main thread, while report.js builds the page. window.vidprunePlotly resolves once Plotly is defined. */
window.vidprunePlotly = new Promise((resolve, reject) => {
  const source = document.getElementById("plotly-js");
  const script = document.createElement("script");
  script.src = URL.createObjectURL(new Blob([source.textContent], { type: "text/javascript" }));
  script.onload = () => { URL.revokeObjectURL(script.src); source.remove(); resolve(window.Plotly); };
  script.onerror = () => reject(new Error("plotly.js did not load"));
  document.head.append(script);
});
