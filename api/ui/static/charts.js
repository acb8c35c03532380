// Loss and accuracy curves, one pair of charts per training stage, drawn by uPlot (vendored:
// vendor/uplot, see api/ui/vendor.json).
import uPlot from "./vendor/uplot/uPlot.esm.js";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const KINDS = [
  { name: "loss", title: "Loss", test: (key) => /loss|nll/.test(key) },
  { name: "accuracy", title: "Accuracy", test: (key) => /acc/.test(key) },
];

function el(tag, attrs = {}, text = "") {
  const node = Object.assign(document.createElement(tag), attrs);
  if (text) node.textContent = text;
  return node;
}

/** One chart: x is the epoch within the stage, one series per metric key. */
class Chart {
  constructor(parent, title, keys) {
    this.keys = keys;
    this.data = [[], ...keys.map(() => [])];
    this.box = el("div", { className: "chart" });
    this.box.dataset.points = "0";
    parent.append(this.box);
    const width = Math.max(320, Math.min(parent.clientWidth || 560, 560));
    this.plot = new uPlot(
      {
        title,
        width,
        height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "epoch" }, {}],
        series: [
          { label: "epoch" },
          ...keys.map((key, i) => ({ label: key, stroke: PALETTE[i % PALETTE.length], width: 2 })),
        ],
      },
      this.data,
      this.box,
    );
  }

  add(x, metrics) {
    this.data[0].push(x);
    this.keys.forEach((key, i) => this.data[i + 1].push(metrics[key] ?? null));
    this.plot.setData(this.data);
    this.box.dataset.points = String(this.data[0].length);
  }
}

/** The curves of a job: a section per stage, created as the stage's first epoch arrives.
 * `container.dataset.points` counts the epochs drawn (what the browser test watches). */
export class StageCurves {
  constructor(container) {
    this.container = container;
    this.stages = new Map();
    this.points = 0;
    container.dataset.points = "0";
  }

  add(stage, epoch, metrics) {
    let charts = this.stages.get(stage);
    if (!charts) {
      const section = el("section", { className: "stage" });
      section.dataset.stage = stage;
      section.append(el("h3", {}, `Stage: ${stage}`));
      const row = el("div", { className: "charts" });
      section.append(row);
      this.container.append(section);
      const keys = Object.keys(metrics).sort();
      charts = KINDS.map((kind) => {
        const mine = keys.filter(kind.test);
        return mine.length ? new Chart(row, kind.title, mine) : null;
      }).filter(Boolean);
      this.stages.set(stage, charts);
    }
    for (const chart of charts) chart.add(epoch, metrics);
    this.points += 1;
    this.container.dataset.points = String(this.points);
  }
}
