// The dashboard: a hash-routed single page over the REST API (api.js). Every value from the
// API is written with textContent, never as HTML.
import { ApiError, api, clearKey, download, followEvents, getKey, setKey } from "./api.js";
import { StageCurves } from "./charts.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leaving = new AbortController(); // aborted when the page changes: streams, timers

/** h("td", {className: "x"}, "text", childNode, ...): an element with text-only children. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = (v) =>
  v === null || v === undefined
    ? "—"
    : typeof v === "number"
      ? Number.isInteger(v) || Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : v.toPrecision(4)
      : Array.isArray(v) ? v.join("×") : String(v);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const short = (id) => String(id).slice(0, 8);
const progressBar = (p) => h("progress", { max: 1, value: p ?? 0, title: `${Math.round((p ?? 0) * 100)} %` });

function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, ...headers.map((c) => h("th", {}, c)))),
    h("tbody", {}, ...rows),
  );
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function errorBox(error) {
  return h("p", { className: "error", role: "alert" }, error instanceof Error ? error.message : String(error));
}

/** Re-run `load` every `ms` until the page changes (lists are small; polling keeps it simple). */
function every(ms, load) {
  const signal = leaving.signal;
  const tick = async () => {
    if (signal.aborted) return;
    try {
      await load(signal);
    } catch (error) {
      if (!signal.aborted && !(error instanceof DOMException)) main.append(errorBox(error));
      return;
    }
    if (!signal.aborted) setTimeout(tick, ms);
  };
  tick();
}

// ---- sign in ---------------------------------------------------------------------------------

function signIn(message = "") {
  nav.hidden = true;
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true, size: 50 });
  const status = h("p", { className: "error", role: "alert" }, message);
  const form = h(
    "form",
    {
      id: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        setKey(input.value.trim());
        try {
          await api("/v1/jobs?limit=1");
        } catch (error) {
          clearKey();
          status.textContent =
            error instanceof ApiError && error.status === 401
              ? "That key was refused. Create one with `kdserve keys create --tenant NAME`."
              : `The API could not be reached: ${error.message}`;
          return;
        }
        route();
      },
    },
    h("h1", {}, "Sign in"),
    h("label", { htmlFor: "api-key" }, "API key "),
    input,
    " ",
    h("button", { type: "submit" }, "Sign in"),
    h("p", { className: "hint" }, "The key stays in this tab (sessionStorage) and is sent only to this API."),
    status,
  );
  show(form);
  input.focus();
}

// ---- jobs ------------------------------------------------------------------------------------

function jobsPage() {
  const body = h("div");
  show(h("h1", {}, "Jobs"), body);
  every(3000, async (signal) => {
    const { items } = await api("/v1/jobs?limit=100", { signal });
    const rows = items.map((job) =>
      h(
        "tr",
        { dataset: { jobId: job.id, status: job.status } },
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || short(job.id))),
        h("td", { className: `status ${job.status}` }, job.status),
        h("td", {}, job.stage ?? "—"),
        h("td", {}, progressBar(job.progress)),
        h("td", {}, job.sweep_id ? h("a", { href: `#/sweeps/${job.sweep_id}` }, short(job.sweep_id)) : "—"),
        h("td", {}, when(job.created_at)),
      ),
    );
    body.replaceChildren(
      items.length
        ? table(["job", "status", "stage", "progress", "sweep", "created"], rows, { id: "jobs" })
        : h("p", {}, "No jobs yet: submit one with `kdserve jobs submit` or POST /v1/jobs."),
    );
  });
}

const REPORT_ROWS = [
  ["accuracy", "accuracy"],
  ["top-5 accuracy", "top5"],
  ["NLL", "nll"],
  ["agreement with teacher", "agreement"],
  ["parameters", "params"],
  ["MACs", "macs"],
  ["size (bytes)", "size_bytes"],
  ["CPU latency (ms, batch 1)", "latency_ms"],
  ["CPU throughput (samples/s)", "throughput"],
];

function reportTable(report) {
  const models = [["teacher", report.teacher], ["student", report.student], ["baseline (student alone)", report.baseline]]
    .filter(([, m]) => m);
  const rows = REPORT_ROWS.map(([label, key]) =>
    h("tr", {}, h("th", { scope: "row" }, label), ...models.map(([, m]) => h("td", {}, fmt(m[key])))),
  );
  const facts = [
    ["method", report.method],
    ["compression (teacher / student params)", report.compression],
    ["speed-up (teacher / student latency)", report.speedup],
    ["gain over baseline (points)", report.gain_points],
    ["evaluated on", `${report.data.eval_split}, ${fmt(report.data.eval_samples)} samples`],
    ["exported epoch", report.exported?.epoch],
    ["device", report.device],
  ];
  return h(
    "div",
    {},
    table(["", ...models.map(([name]) => name)], rows, { id: "report-table" }),
    h("dl", { className: "facts" }, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v))])),
    report.warnings?.length ? h("ul", { className: "warnings" }, ...report.warnings.map((w) => h("li", {}, w))) : null,
  );
}

function artifactsTable(items) {
  const rows = items.map((a) => {
    const status = h("span", { className: "hint" });
    const button = h(
      "a",
      {
        href: "#",
        className: "download",
        dataset: { name: a.name },
        onclick: async (event) => {
          event.preventDefault();
          status.textContent = " downloading…";
          try {
            await download(a.url, a.name);
            status.textContent = "";
          } catch (error) {
            status.textContent = ` ${error.message}`;
          }
        },
      },
      a.name,
    );
    return h("tr", {}, h("td", {}, button, status), h("td", {}, fmt(a.size)), h("td", { className: "mono" }, a.sha256.slice(0, 16)));
  });
  return table(["file", "bytes", "sha256"], rows, { id: "artifacts" });
}

function jobPage(id) {
  const signal = leaving.signal;
  const header = h("div", { id: "job-header" });
  const failure = h("div", { id: "job-error" });
  const curves = h("div", { id: "curves" });
  const report = h("details", { id: "report", hidden: true }, h("summary", {}, "Report: teacher vs student"));
  const artifacts = h("section", { id: "job-artifacts" });
  show(h("h1", { id: "job-title" }, `Job ${short(id)}`), header, failure, h("h2", {}, "Curves"), curves, report, artifacts);
  const charts = new StageCurves(curves);
  let finished = false;

  const refresh = async () => {
    const job = await api(`/v1/jobs/${id}`, { signal });
    document.getElementById("job-title").textContent = `Job ${job.name || short(job.id)}`;
    header.dataset.status = job.status;
    header.replaceChildren(
      h(
        "dl",
        { className: "facts" },
        h("dt", {}, "status"), h("dd", { id: "job-status", className: `status ${job.status}` }, job.status),
        h("dt", {}, "stage"), h("dd", {}, job.stage ?? "—"),
        h("dt", {}, "epoch"), h("dd", {}, job.epoch ?? "—"),
        h("dt", {}, "progress"), h("dd", {}, progressBar(job.progress), ` ${Math.round(job.progress * 100)} %`),
        h("dt", {}, "method"), h("dd", {}, job.config?.method ?? "—"),
        h("dt", {}, "attempts"), h("dd", {}, job.attempts),
        h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
      ),
    );
    failure.replaceChildren(
      job.error ? h("div", { className: "error", role: "alert" }, h("strong", {}, job.error.code), ": ", job.error.message) : "",
    );
    if (!finished && ["succeeded", "failed", "canceled"].includes(job.status)) {
      finished = true;
      await loadResults(job);
    }
  };

  const loadResults = async (job) => {
    const { items } = await api(`/v1/jobs/${id}/artifacts`, { signal });
    artifacts.replaceChildren(h("h2", {}, "Artifacts"), items.length ? artifactsTable(items) : h("p", {}, "No artifacts."));
    if (job.status === "succeeded") {
      report.append(reportTable(await api(`/v1/jobs/${id}/report`, { signal })));
      report.hidden = false;
    }
  };

  const run = async () => {
    await refresh();
    const hadEvents = await followEvents(
      id,
      (event) => {
        if (event.kind === "epoch") charts.add(event.data.stage, event.data.epoch, event.data.metrics);
        else refresh().catch(() => {}); // a state change or the report: read the job again
      },
      { signal },
    );
    if (!hadEvents && !signal.aborted) {
      // A job from before the event log: its stored metric series, by step, as one stage.
      const { series } = await api(`/v1/jobs/${id}/metrics`, { signal });
      const steps = new Map();
      for (const [key, points] of Object.entries(series))
        for (const p of points) (steps.get(p.step) ?? steps.set(p.step, {}).get(p.step))[key] = p.value;
      for (const [step, metrics] of [...steps].sort((a, b) => a[0] - b[0])) charts.add("all", step, metrics);
    }
    if (!signal.aborted) await refresh();
  };
  run().catch((error) => {
    if (!signal.aborted) main.append(errorBox(error));
  });
}

// ---- sweeps ----------------------------------------------------------------------------------

function sweepsPage() {
  const body = h("div");
  show(h("h1", {}, "Sweeps"), body);
  every(5000, async (signal) => {
    const { items } = await api("/v1/sweeps?limit=100", { signal });
    const rows = items.map((s) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name || short(s.id))),
        h("td", { className: `status ${s.status}` }, s.status),
        h("td", {}, Object.entries(s.counts).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(", ")),
        h("td", {}, s.metric),
        h("td", {}, when(s.created_at)),
      ),
    );
    body.replaceChildren(items.length ? table(["sweep", "status", "points", "metric", "created"], rows, { id: "sweeps" }) : h("p", {}, "No sweeps yet."));
  });
}

function pointRows(points) {
  return points.map((p) =>
    h(
      "tr",
      {},
      h("td", {}, p.index),
      h("td", {}, h("a", { href: `#/jobs/${p.job_id}` }, short(p.job_id))),
      h("td", { className: "mono" }, JSON.stringify(p.overrides)),
      h("td", { className: `status ${p.status}` }, p.status),
      h("td", {}, progressBar(p.progress)),
      h("td", {}, fmt(p.val_accuracy)),
      h("td", {}, fmt(p.val_nll)),
      h("td", {}, fmt(p.best_epoch)),
    ),
  );
}

function sweepPage(id) {
  const body = h("div");
  show(h("h1", {}, `Sweep ${short(id)}`), body);
  const cols = ["#", "job", "overrides", "status", "progress", "val accuracy", "val NLL", "best epoch"];
  every(5000, async (signal) => {
    const s = await api(`/v1/sweeps/${id}`, { signal });
    body.replaceChildren(
      h("p", {}, `${s.status}; ranked by ${s.metric}`),
      h("h2", {}, "Leaderboard"),
      s.leaderboard.length ? table(cols, pointRows(s.leaderboard), { id: "leaderboard" }) : h("p", {}, "No point has succeeded yet."),
      h("h2", {}, "Points"),
      table(cols, pointRows(s.points), { id: "points" }),
    );
  });
}

// ---- teachers and datasets -------------------------------------------------------------------

function teachersPage() {
  const body = h("div");
  show(h("h1", {}, "Teachers"), body);
  every(5000, async (signal) => {
    const { items } = await api("/v1/teachers?limit=100", { signal });
    body.replaceChildren(
      ...items.map((t) =>
        h(
          "details",
          { className: "asset", dataset: { teacherId: t.id } },
          h("summary", {}, `${t.name} — ${t.status}, input ${fmt(t.input_shape)}, ${t.num_classes} classes, ${fmt(t.params)} params`),
          t.error ? h("p", { className: "error" }, t.error) : null,
          t.layers ? table(["layer", "output shape"], t.layers.map((l) => h("tr", {}, h("td", { className: "mono" }, l.path), h("td", {}, fmt(l.shape))))) : null,
        ),
      ),
    );
    if (!items.length) body.append(h("p", {}, "No teachers yet."));
  });
}

function datasetsPage() {
  const body = h("div");
  show(h("h1", {}, "Datasets"), body);
  every(5000, async (signal) => {
    const { items } = await api("/v1/datasets?limit=100", { signal });
    const rows = items.map((d) =>
      h(
        "tr",
        {},
        h("td", {}, d.name),
        h("td", { className: `status ${d.status}` }, d.status),
        h("td", {}, fmt(d.samples)),
        h("td", {}, fmt(d.input_shape)),
        h("td", { title: (d.classes ?? []).join(", ") }, d.classes ? d.classes.length : "—"),
        h("td", {}, d.error ?? ""),
      ),
    );
    body.replaceChildren(items.length ? table(["dataset", "status", "samples", "input shape", "classes", "error"], rows, { id: "datasets" }) : h("p", {}, "No datasets yet."));
  });
}

// ---- routing ---------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, jobPage],
  [/^#\/sweeps\/([\w-]+)$/, sweepPage],
  [/^#\/sweeps$/, sweepsPage],
  [/^#\/teachers$/, teachersPage],
  [/^#\/datasets$/, datasetsPage],
  [/^/, jobsPage],
];

function route() {
  leaving.abort();
  leaving = new AbortController();
  if (!getKey()) return signIn();
  nav.hidden = false;
  for (const [pattern, page] of ROUTES) {
    const match = location.hash.match(pattern);
    if (match) return page(...match.slice(1));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("kdserve:unauthorized", () => {
  if (document.getElementById("sign-in")) return; // the sign-in form says it itself
  clearKey();
  leaving.abort();
  signIn("The key was refused (revoked?). Sign in again.");
});
document.getElementById("sign-out").addEventListener("click", () => {
  clearKey();
  route();
});
route();
