// The REST API, called with the key the user typed (Authorization: Bearer).
//
// The key lives in sessionStorage: it goes with the tab, is never sent unless this code
// sends it (a cookie would ride along on every request, including forged cross-site ones),
// and never appears in a URL (URLs end up in history, logs and Referer headers).

const KEY = "kdserve.key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${getKey()}`, Accept: "application/json", ...extra };
}

async function failure(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not a problem+json body (a proxy's page); the status says enough
  }
  const error = new ApiError(response.status, problem);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("kdserve:unauthorized"));
  return error;
}

/** GET a JSON resource of the API. */
export async function api(path, { signal } = {}) {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Download an artifact (the key rides in a header, so a plain link cannot do it): fetch it,
 * then save the bytes under `name` through a temporary blob: URL. */
export async function download(url, name) {
  const response = await fetch(url, { headers: headers({ Accept: "*/*" }) });
  if (!response.ok) throw await failure(response);
  const href = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/** Parse a text/event-stream body into `{id, event, data}` frames (the WHATWG grammar,
 * less `retry:`, which this server never sends). */
export async function* parseSse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const frame = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") frame.data.push(text);
        else if (field === "id") frame.id = text;
        else if (field === "event") frame.event = text;
      }
      if (frame.data.length) yield { ...frame, data: frame.data.join("\n") };
    }
  }
}

/** Is this the job's last event (its report, or a failed or canceled state)? */
export const isLastEvent = (e) =>
  e.kind === "report" || (e.kind === "state" && ["failed", "canceled"].includes(e.status));

/** Follow a job's events (GET /v1/jobs/{id}/events as server-sent events) from the first one
 * until its last, calling `onEvent` for each. EventSource cannot send an Authorization
 * header, hence fetch() and parseSse; a dropped or ended stream is resumed with
 * Last-Event-ID, so no event is missed or seen twice. Returns false when the job has no
 * events at all (one submitted before the log existed): its stream ends at once, empty. */
export async function followEvents(jobId, onEvent, { signal }) {
  let last = null;
  for (;;) {
    const extra = { Accept: "text/event-stream" };
    if (last !== null) extra["Last-Event-ID"] = last;
    let response;
    try {
      response = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(extra), signal });
    } catch {
      if (signal.aborted) return true;
      await sleep(2000, signal); // the API is restarting or the network dropped
      continue;
    }
    if (response.status === 429 || response.status >= 500) {
      const wait = Number(response.headers.get("Retry-After")) || 5;
      await sleep(wait * 1000, signal);
      if (signal.aborted) return true;
      continue;
    }
    if (!response.ok) throw await failure(response);
    try {
      for await (const frame of parseSse(response.body)) {
        last = frame.id;
        const event = JSON.parse(frame.data);
        onEvent(event);
        if (isLastEvent(event)) return true;
      }
    } catch {
      if (signal.aborted) return true;
    }
    if (last === null) return false;
    // Ended early (the server's stream limit, a restart): resume after the last event.
    await sleep(1000, signal);
    if (signal.aborted) return true;
  }
}
