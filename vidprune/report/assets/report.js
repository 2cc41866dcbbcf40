/* vidprune report: builds the page from the JSON in #vidprune-data, with plotly.js once load_plotly.js
   has it compiled (window.vidprunePlotly).

   Opening fast: the page, its headings and the first tables appear while plotly.js compiles. Plots are drawn when their group
   comes near the viewport, then the rest one group per task in the background, so the page stays
   responsive. window.vidpruneReport says how far drawing has got (the browser tests and
   benchmarks/report_size.py read it). */
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("vidprune-data").textContent);
  const strings = data.strings;
  const state = { total: data.groups.length, rendered: 0, plotlyMs: null, firstMs: null, allMs: null,
                  errors: [], drawMs: [] };
  window.vidpruneReport = state;

  // Left-aligned columns, as in `vidprune table`.
  const TEXT_COLUMNS = new Set(["method", "backbone", "input", "status", "source", "marks", "file"]);
  const PLOT_CONFIG = { responsive: true, displaylogo: false,
                        modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"] };
  const FONT = { family: "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif", size: 12 };
  const WRAP = 70;
  // one method's option sets: same colour, their own line style
  const DASHES = ["solid", "dash", "dot", "dashdot", "longdash"];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false || value === "") continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const axisLabel = (column) => data.axis_labels[column] || column;
  const colour = (method) => data.colours[method] || "#444444";
  const present = (values, i) => values && values[i] !== null && values[i] !== undefined;
  const fmt = (value, digits) => String(Number(value.toPrecision(digits || 4)));
  const esc = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

  function wrap(text) {  // plotly does not wrap hover text: break long options, token lists and notes
    const lines = [];
    let line = "";
    for (const word of String(text).split(/(?<=[ ,])/)) {
      if (line && (line + word).length > WRAP) { lines.push(line); line = ""; }
      line += word;
    }
    if (line) lines.push(line);
    return lines.map(esc).join("<br>   ");
  }

  // --- plots -------------------------------------------------------------------------------------

  /* A point's configuration, for its hover label: method, knob and keep, options, tokens per block,
     latency +- IQR, status, source, notes and the file it came from. */
  function hoverText(g, i) {
    const p = g.points, f = p.fields;
    const text = (column) => strings[f[column][i]];
    const lines = ["<b>" + esc(p.method[i] || "?") + "</b>"];
    if (text("knob") || p.keep[i] !== null) {
      lines.push("knob " + esc(text("knob") || "-") + " · keep " + (p.keep[i] !== null ? fmt(p.keep[i]) : "-"));
    }
    if (text("options")) lines.push("options " + wrap(text("options")));
    if (text("tokens_per_block")) lines.push("tokens per block " + wrap(text("tokens_per_block")));
    if (p.latency_ms[i] !== null) {
      lines.push("latency " + fmt(p.latency_ms[i]) + (p.latency_iqr_ms[i] !== null ? " ± " + fmt(p.latency_iqr_ms[i], 3) : "") +
                 " ms (median ± IQR)" + (p.noisy[i] ? " · noisy" : ""));
    }
    lines.push("status " + esc(text("status") || "-"));
    if (text("source") && text("source") !== "measured") lines.push("source: " + wrap(text("source")));
    if (text("reference_note")) lines.push("paper note: " + wrap(text("reference_note")));
    if (text("notes")) lines.push("notes: " + wrap(text("notes")));
    if (text("file")) lines.push("file " + esc(text("file")));
    return lines.join("<br>");
  }

  function seriesTrace(g, series, idx, xs, ys, xName, yName, labelled) {
    const p = g.points;
    const c = colour(series.method);
    const trace = { type: "scatter", name: series.name, legendgroup: series.method, x: idx.map((i) => xs[i]),
                    y: idx.map((i) => ys[i]), hovertext: idx.map((i) => hoverText(g, i)), customdata: idx,
                    hovertemplate: "%{hovertext}<br>" + xName + " %{x:.4~g} · " + yName + " %{y:.4~g}<extra></extra>",
                    hoverlabel: { align: "left" }, cliponaxis: false };
    if (series.kind === "unpruned") {
      trace.mode = "markers";
      trace.marker = { symbol: "star", size: 19, color: c, line: { color: "#000", width: 1 } };
    } else {  // measured lines, or paper points: hollow, named after their source, never joined
      const paper = series.kind === "paper";
      const withText = labelled && idx.length <= data.max_labelled_points;
      trace.mode = (paper ? "markers" : "lines+markers") + (withText ? "+text" : "");
      if (withText) {
        trace.text = idx.map((i) => (p.keep[i] !== null ? fmt(p.keep[i]) : ""));
        trace.textposition = paper ? "bottom right" : "top left";
        trace.textfont = { size: 9, color: c, style: paper ? "italic" : "normal" };
      }
      if (paper) {
        trace.marker = { symbol: "circle-open", size: 12, color: c, line: { width: 2.2 } };
      } else {
        trace.line = { color: c, width: 2, dash: DASHES[series.variant % DASHES.length] };
        trace.marker = { size: 8, color: c };
      }
    }
    return trace;
  }

  function plotLayout(title, xTitle, yTitle) {
    return { height: 440, margin: { l: 64, r: 12, t: 34, b: 52 }, hovermode: "closest", font: FONT,
             title: { text: title, font: { size: 13 }, x: 0.01 },
             xaxis: { title: { text: xTitle }, zeroline: false, automargin: true },
             yaxis: { title: { text: yTitle }, zeroline: false, automargin: true }, legend: { font: { size: 11 } } };
  }

  function paretoFigure(g, cost, quality) {
    const p = g.points, xs = p.values[cost], ys = p.values[quality];
    const traces = [];
    const front = g.front[cost + "|" + quality] || [];
    if (front.length) {
      traces.push({ type: "scatter", mode: "lines+markers", name: "Pareto front", legendgroup: "Pareto front",
                    x: front.map((i) => xs[i]), y: front.map((i) => ys[i]), hoverinfo: "skip",
                    line: { shape: "hv", width: 10, color: "rgba(120,120,120,0.25)" },
                    marker: { symbol: "circle-open", size: 17, color: "rgba(50,50,50,0.75)", line: { width: 1.3 } } });
    }
    for (const series of g.series) {
      const idx = series.points.filter((i) => present(xs, i) && present(ys, i));
      if (!idx.length) continue;
      const trace = seriesTrace(g, series, idx, xs, ys, cost, quality, true);
      const halfIqr = idx.map((i) => (p.noisy[i] && p.latency_iqr_ms[i] !== null ? p.latency_iqr_ms[i] / 2 : 0));
      if (cost === "latency_ms" && halfIqr.some((h) => h > 0)) {
        // noisy timings: half the IQR either side of the median, as `vidprune plot` draws them
        trace.error_x = { type: "data", array: halfIqr, visible: true, color: colour(series.method), thickness: 1, width: 3 };
      }
      traces.push(trace);
    }
    return { traces: traces, layout: plotLayout(quality + " vs " + cost, axisLabel(cost), axisLabel(quality)) };
  }

  function speedupFigure(g) {
    const xs = g.points.values.speedup_flops, ys = g.points.values.speedup_latency;
    const traces = [];
    let lo = 1, hi = 1;
    for (const series of g.series) {
      if (series.kind === "paper") continue;
      const idx = series.points.filter((i) => present(xs, i) && present(ys, i));
      if (!idx.length) continue;
      for (const i of idx) { lo = Math.min(lo, xs[i], ys[i]); hi = Math.max(hi, xs[i], ys[i]); }
      traces.push(seriesTrace(g, series, idx, xs, ys, "speedup_flops", "speedup_latency", false));
    }
    // on the diagonal every FLOP saved is time saved
    traces.unshift({ type: "scatter", mode: "lines", name: "realized = theoretical", x: [lo, hi], y: [lo, hi],
                     hoverinfo: "skip", line: { dash: "dot", color: "#555", width: 1.3 } });
    return { traces: traces, layout: plotLayout("realized vs theoretical speedup", axisLabel("speedup_flops"),
                                                axisLabel("speedup_latency")) };
  }

  function drawPareto(g, section) {
    const div = section.querySelector(".plot.pareto");
    const cost = section.querySelector("select.cost-axis").value;
    const quality = section.querySelector("select.quality-axis").value;
    const figure = paretoFigure(g, cost, quality);
    div.classList.remove("pending");
    div.textContent = "";
    div.dataset.cost = cost;
    div.dataset.quality = quality;
    const config = Object.assign({ toImageButtonOptions: { filename: g.id + "_" + quality + "_vs_" + cost } }, PLOT_CONFIG);
    return Plotly.react(div, figure.traces, figure.layout, config);
  }

  function drawSpeedup(g, section) {
    const div = section.querySelector(".plot.speedup");
    const figure = speedupFigure(g);
    div.classList.remove("pending");
    div.textContent = "";
    const config = Object.assign({ toImageButtonOptions: { filename: g.id + "_speedup" } }, PLOT_CONFIG);
    return Plotly.newPlot(div, figure.traces, figure.layout, config);
  }

  // --- tables ------------------------------------------------------------------------------------

  /* What a cell sorts on: its number ('1514.7 ± 12.3' -> 1514.7, '-40.1%' -> -40.1, 'ref' -> 0), else
     its text; empty cells sort last whichever the direction. */
  function sortKey(column, text) {
    if (text === "") return null;
    if (column === "gflops_change" && text === "ref") return 0;
    const head = text.split(" ± ")[0].replace(/%$/, "");
    const number = Number(head);
    return head.trim() !== "" && Number.isFinite(number) ? number : text.toLowerCase();
  }

  function compareKeys(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    if (typeof a === "number") return -1;  // numbers before text
    if (typeof b === "number") return 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function resultsTable(t) {
    const table = el("table", { class: "results sortable" });
    const headRow = el("tr");
    const body = el("tbody");
    const rows = t.rows.map((cells, r) => {
      const tr = el("tr", { class: t.classes[r], title: t.titles[r] }, cells.map((text, j) =>
        el("td", { text: text, class: (TEXT_COLUMNS.has(t.columns[j]) ? "text " : "") + t.columns[j] })));
      tr.dataset.order = r;
      return tr;
    });
    let keys = null;
    function sortBy(j) {
      keys = keys || t.rows.map((cells) => cells.map((text, k) => sortKey(t.columns[k], text)));
      const th = headRow.children[j];
      const direction = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
      for (const other of headRow.children) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", direction);
      const sign = direction === "ascending" ? 1 : -1;
      const sorted = rows.slice().sort((x, y) => {
        const a = keys[x.dataset.order][j], b = keys[y.dataset.order][j];
        if (a === null || b === null) return a === b ? x.dataset.order - y.dataset.order : a === null ? 1 : -1;
        return sign * compareKeys(a, b) || x.dataset.order - y.dataset.order;
      });
      body.append(...sorted);
    }
    t.columns.forEach((column, j) => {
      const th = el("th", { text: column, class: TEXT_COLUMNS.has(column) ? "text" : null, "aria-sort": "none",
                            title: "sort by " + column, "data-column": column });
      th.addEventListener("click", () => sortBy(j));
      headRow.append(th);
    });
    const fragment = document.createDocumentFragment();
    fragment.append(...rows);
    body.append(fragment);
    table.append(el("thead", {}, [headRow]), body);
    return table;
  }

  function plainTable(columns, rows, cls) {
    return el("table", { class: "plain " + (cls || "") }, [
      el("thead", {}, [el("tr", {}, columns.map((c) => el("th", { text: c })))]),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((v) => el("td", { text: String(v) })))))]);
  }

  function leftOutTable(records) {
    const columns = ["method", "knob", "keep", "status", "left out of", "reason", "file"];
    return plainTable(columns, records.map((r) => [r.method, r.knob, r.keep, r.status, r.left_out_of, r.reason,
                                                   r.file]), "left-out");
  }

  // --- page --------------------------------------------------------------------------------------

  function groupSkeleton(g, i) {
    const section = el("section", { class: "group", id: g.id, "data-group": i });
    section.append(el("h2", { text: g.label }));
    const config = el("p", { class: "config" });
    for (const [key, value] of Object.entries(g.config)) {
      if (value !== "") config.append(el("span", { text: key + ": " + value }));
    }
    section.append(config);
    const c = g.counts;
    section.append(el("p", { class: "muted", text: c.rows + " measured rows (" + c.ok + " ok, " + c.failed +
      " failed), " + c.references + " paper reference rows" }));
    const plots = el("div", { class: "plots" });
    if (g.axes.default_cost && g.axes.default_quality) {
      const select = (cls, options, chosen) => el("select", { class: cls }, options.map((o) =>
        el("option", { value: o, text: axisLabel(o), selected: o === chosen ? "selected" : null })));
      const costSelect = select("cost-axis", g.axes.cost, g.axes.default_cost);
      const qualitySelect = select("quality-axis", g.axes.quality, g.axes.default_quality);
      section.append(el("div", { class: "controls" }, [
        el("label", { text: "cost" }, [costSelect]), el("label", { text: "quality" }, [qualitySelect])]));
      const redraw = () => { if (section.dataset.plotted) drawPareto(g, section); };
      costSelect.addEventListener("change", redraw);
      qualitySelect.addEventListener("change", redraw);
      plots.append(el("div", { class: "plot pareto pending", text: "drawing…" }));
    }
    if (g.speedup) plots.append(el("div", { class: "plot speedup pending", text: "drawing…" }));
    if (plots.children.length) section.append(plots);
    if (g.notes.length) section.append(el("ul", { class: "notes" }, g.notes.map((n) => el("li", { text: n }))));
    section.append(el("h3", { text: "Results" }), el("div", { class: "table-wrap results-wrap" }));
    if (g.left_out.length) {
      section.append(el("h3", { text: "Left out of this configuration's plots (" + g.left_out.length + ")" }),
                     el("div", { class: "table-wrap left-out-wrap" }, [leftOutTable(g.left_out)]));
    }
    return section;
  }

  let plotlyReady = false;

  function drawTable(i, sections) {
    const section = sections[i];
    if (section.dataset.tabled) return;
    section.dataset.tabled = "1";
    section.querySelector(".results-wrap").append(resultsTable(data.groups[i].table));
  }

  function renderGroup(i, sections) {  // table and plots; plots wait for plotly.js
    drawTable(i, sections);
    const section = sections[i];
    if (!plotlyReady || section.dataset.plotted) return;
    section.dataset.plotted = "1";
    const g = data.groups[i];
    const start = performance.now();
    try {
      if (section.querySelector(".plot.pareto")) drawPareto(g, section);
      if (section.querySelector(".plot.speedup")) drawSpeedup(g, section);
    } catch (error) {
      state.errors.push(g.id + ": " + error);
      console.error("vidprune report: could not draw " + g.label, error);
    }
    state.drawMs.push(performance.now() - start);
    state.rendered += 1;
    if (state.firstMs === null) state.firstMs = performance.now();
    document.body.dataset.renderedGroups = String(state.rendered);
    if (state.rendered === state.total) {
      state.allMs = performance.now();
      document.body.dataset.ready = "1";
    }
  }

  function provenanceSection() {
    const section = el("section", { class: "provenance", id: "provenance" }, [el("h2", { text: "Sources" })]);
    section.append(el("p", { class: "muted", text: "Where every number came from: one entry per result table." }));
    const rows = data.provenance.map((p) => {
      const details = el("div", {}, p.fields.map(([key, value]) => el("div", {}, [
        el("b", { text: key + ": " }), document.createTextNode(value)])));
      return el("tr", {}, [el("td", { text: p.file, title: p.path }), el("td", { text: String(p.rows) }),
                           el("td", { text: p.statuses }), el("td", {}, [details])]);
    });
    section.append(el("div", { class: "table-wrap" }, [el("table", { class: "plain provenance" }, [
      el("thead", {}, [el("tr", {}, ["file", "rows", "status", "environment"].map((c) => el("th", { text: c })))]),
      el("tbody", {}, rows)])]));
    return section;
  }

  function build() {
    const root = document.getElementById("report");
    root.append(el("h1", { text: data.title }));
    root.append(el("p", { class: "summary muted", text: data.rows + " result rows from " + data.tables +
      " table" + (data.tables === 1 ? "" : "s") + " in " + data.groups.length + " configuration" +
      (data.groups.length === 1 ? "" : "s") + ". Hover a point for its configuration, click a legend entry " +
      "to hide a method, click a column header to sort." }));
    root.append(el("p", { class: "legend-key muted" }, [document.createTextNode("Table rows: "),
      el("span", { class: "key-failed", style: "background:var(--failed)", text: "failed" }),
      el("span", { class: "key-noisy", style: "background:var(--noisy)", text: "noisy timing" }),
      el("span", { class: "key-paper", style: "background:var(--paper)", text: "paper reference" })]));
    root.append(el("nav", { class: "contents" }, [el("b", { text: "Configurations" }),
      el("ol", {}, data.groups.map((g) => el("li", {}, [el("a", { href: "#" + g.id, text: g.label }),
        document.createTextNode(" (" + g.counts.rows + " rows)")])))]));
    const sections = data.groups.map((g, i) => groupSkeleton(g, i));
    root.append(...sections);
    if (data.left_out.length) {
      root.append(el("section", { class: "report-left-out", id: "left-out" }, [
        el("h2", { text: "Rows left out of every configuration (" + data.left_out.length + ")" }),
        el("div", { class: "table-wrap" }, [leftOutTable(data.left_out)])]));
    }
    root.append(provenanceSection());
    root.append(el("footer", { text: "Generated " + data.generated + " by vidprune " + data.vidprune_version +
      " with plotly.js " + data.plotly_version + "; everything is inside this file." }));
    return sections;
  }

  const sections = build();
  const visible = new Set();
  if ("IntersectionObserver" in window) {
    const observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        const i = Number(entry.target.dataset.group);
        visible.add(i);
        renderGroup(i, sections);
        if (plotlyReady) observer.unobserve(entry.target);
      }
    }, { rootMargin: "600px 0px" });
    sections.forEach((s) => observer.observe(s));
  }

  let next = 0;
  function drawRest() {  // one group per task, so scrolling and hovering stay responsive meanwhile
    while (next < sections.length && sections[next].dataset.plotted) next += 1;
    if (next >= sections.length) return;
    renderGroup(next, sections);
    setTimeout(drawRest, 0);
  }

  function plotlyLoaded() {
    plotlyReady = true;
    state.plotlyMs = performance.now();
    for (const i of Array.from(visible).sort((a, b) => a - b)) renderGroup(i, sections);
    setTimeout(drawRest, 0);
  }

  window.vidprunePlotly.then(plotlyLoaded, (error) => {
    state.errors.push(String(error));
    console.error("vidprune report: " + error + "; the tables are complete, the plots are missing");
  });
})();
