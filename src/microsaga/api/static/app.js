// microsaga dashboard: plain JavaScript, no build step. Data never goes through
// innerHTML: every text is set with textContent. Paths are relative to <base>, so the
// dashboard works where the app is mounted (/, /saga/...).
"use strict";
(() => {
  const TOKEN_KEY = "microsaga.token";
  const LIST_REFRESH_MS = 2000;
  const SUSPENDED_POLL_MS = 3000; // a suspended execution's page reads it this often
  const TRUNCATE_AT = 2000; // characters of pretty JSON shown before "Show all"
  const MAP_ROWS = 20; // a map with more runs shows their counts, not a card per run
  const LISTED = 20; // failed or undoing runs of such a map still shown as cards
  const REDRAW_MS = 100; // live changes are drawn together, at most this often
  const STOPPED = new Set(["SUCCESS", "FAILURE", "ABORTED", "SUSPEND"]);
  const SVG = "http://www.w3.org/2000/svg";
  const STEP_KINDS = ["call", "publish", "function", "wait", "sleep", "workflow", "map"];
  const main = document.getElementById("main");
  let cleanup = []; // what the current view must stop when another one opens

  // DOM helpers -----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // replace a node's children, leaving out the null ones of conditional parts
  function fill(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function badge(status, attrs) {
    return el("span", { class: `badge st-${status}`, ...(attrs || {}) }, status);
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function seconds(start, end) {
    if (!start || !end) return "";
    const s = (new Date(end) - new Date(start)) / 1000;
    return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
  }

  function showAlert(text) {
    const box = document.getElementById("alert");
    box.textContent = text;
    box.hidden = !text;
  }

  // pretty JSON, large bodies truncated with a button to see them whole
  function jsonBlock(label, value, open) {
    const text = value === null || value === undefined ? "(empty)" : JSON.stringify(value, null, 2);
    const pre = el("pre", { tabindex: "0" });
    const details = el("details", { class: "json", open: open || false }, el("summary", {}, label), pre);
    if (text.length <= TRUNCATE_AT) {
      pre.textContent = text;
      return details;
    }
    pre.textContent = text.slice(0, TRUNCATE_AT) + "\n…";
    const more = el("button", { type: "button", class: "show-all" },
      `Show all (${Math.round(text.length / 1024)} KB)`);
    more.addEventListener("click", () => { pre.textContent = text; more.remove(); });
    details.append(more);
    return details;
  }

  // the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
      this.status = status;
      this.code = problem && problem.code;
    }
  }

  let asking = null; // one token dialog for every request that got a 401
  let declined = false; // the dialog was dismissed: ask again only from the Token button

  // refused: a token was sent and the server answered 401
  function askToken(refused) {
    if (!asking) {
      asking = new Promise((resolve) => {
        const dialog = document.getElementById("token-dialog");
        const input = document.getElementById("token-input");
        input.value = "";
        document.getElementById("token-refused").hidden = !refused;
        dialog.returnValue = ""; // Escape leaves the last one: not a "save"
        dialog.addEventListener("close", () => {
          if (dialog.returnValue === "save" && input.value.trim()) {
            sessionStorage.setItem(TOKEN_KEY, input.value.trim());
          } else if (dialog.returnValue === "clear") {
            sessionStorage.removeItem(TOKEN_KEY);
          }
          asking = null;
          declined = dialog.returnValue !== "save";
          resolve(dialog.returnValue === "save");
        }, { once: true });
        dialog.showModal();
        input.focus();
      });
    }
    return asking;
  }

  function headers(json) {
    const out = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) out.Authorization = `Bearer ${token}`;
    if (json) out["Content-Type"] = "application/json";
    return out;
  }

  async function api(method, path, body) {
    for (;;) {
      const response = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
      const type = response.headers.get("content-type") || "";
      const data = type.includes("json") ? await response.json() : await response.text();
      if (response.status === 401) {
        if (!declined && await askToken(Boolean(sessionStorage.getItem(TOKEN_KEY)))) continue;
        throw new ApiError(401, data);
      }
      if (!response.ok) throw new ApiError(response.status, data);
      return data;
    }
  }

  // Server-Sent Events over fetch (EventSource cannot send the Authorization header)
  function subscribe(path, onEvent, onClose) {
    const abort = new AbortController();
    (async () => {
      let ended = false;
      try {
        const response = await fetch(path, { headers: headers(false), signal: abort.signal, cache: "no-store" });
        if (response.status === 401) {
          if (!declined && await askToken(Boolean(sessionStorage.getItem(TOKEN_KEY)))) return onClose(false);
          throw new ApiError(401, null);
        }
        if (!response.ok) throw new ApiError(response.status, await response.json());
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let type = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) type = line.slice(7);
              else if (line.startsWith("data: ")) data.push(line.slice(6));
            }
            if (!data.length) continue; // a keep-alive comment
            if (type === "end") ended = true;
            onEvent(type, JSON.parse(data.join("\n")));
          }
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        if (err instanceof ApiError && err.status !== 503) return onClose(true, err);
      }
      if (!abort.signal.aborted) onClose(ended);
    })();
    return () => abort.abort();
  }

  // confirmation dialog with optional fields; resolves to the field values or null
  function confirmAction({ title, text, fields, ok, run }) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const box = document.getElementById("confirm-fields");
    const error = document.getElementById("confirm-error");
    const okButton = document.getElementById("confirm-ok");
    okButton.textContent = ok || "OK";
    error.hidden = true;
    fields = (fields || []).filter(Boolean);
    box.replaceChildren(...fields.map((f) => el("label", {}, f.label,
      f.kind === "json"
        ? el("textarea", { name: f.name, spellcheck: "false", "aria-describedby": "confirm-error" })
        : f.kind === "select"
          ? el("select", { name: f.name }, f.options.map(([v, t]) => el("option", { value: v }, t)))
          : el("input", { name: f.name, type: "text", required: f.required || false }))));
    for (const f of fields || []) {
      if (f.value !== undefined) box.querySelector(`[name="${f.name}"]`).value = f.value;
    }
    const form = document.getElementById("confirm-form");
    const onSubmit = async (event) => {
      if (event.submitter && event.submitter.value !== "ok") return; // Cancel closes it
      event.preventDefault();
      const values = {};
      try {
        for (const f of fields || []) {
          const raw = box.querySelector(`[name="${f.name}"]`).value;
          if (f.kind === "json") {
            if (raw.trim() === "") values[f.name] = undefined;
            else {
              try { values[f.name] = JSON.parse(raw); } catch (e) { throw new Error(`${f.label}: not valid JSON (${e.message})`); }
            }
          } else values[f.name] = raw;
        }
        okButton.disabled = true;
        await run(values);
        dialog.close("done");
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        okButton.disabled = false;
      }
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", () => form.removeEventListener("submit", onSubmit), { once: true });
    dialog.showModal();
    const first = box.querySelector("textarea, input, select");
    (first || okButton).focus();
  }

  // the DAG ---------------------------------------------------------------------------

  // steps: [{id, requires: [...], kind}]; statuses: {id: status}, or null for a
  // definition (its boxes say their kind: there is no status); onPick(id)
  function drawDag(steps, statuses, onPick) {
    const wrap = el("div", { class: "dag", role: "group", "aria-label": "Steps and their requirements" });
    if (!steps.length) return wrap;
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 50, marginx: 6, marginy: 6 });
    g.setDefaultEdgeLabel(() => ({}));
    const known = new Set(steps.map((s) => s.id));
    for (const s of steps) {
      const label = s.id.length > 34 ? s.id.slice(0, 32) + "…" : s.id;
      g.setNode(s.id, { label, width: Math.max(96, label.length * 7.4 + 24), height: 42 });
    }
    for (const s of steps) for (const r of s.requires || []) if (known.has(r)) g.setEdge(r, s.id);
    dagre.layout(g);
    const { width, height } = g.graph();
    const svg = svgEl("svg", { width: Math.ceil(width), height: Math.ceil(height), viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}` });
    const defs = svgEl("defs");
    const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    marker.append(svgEl("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7d8793" }));
    defs.append(marker);
    svg.append(defs);
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      let d = `M ${pts[0].x} ${pts[0].y}`;
      for (let i = 1; i < pts.length; i++) d += ` L ${pts[i].x} ${pts[i].y}`;
      svg.append(svgEl("path", { class: "edge", d, "marker-end": "url(#arrow)", "data-from": e.v, "data-to": e.w }));
    }
    for (const id of g.nodes()) {
      const n = g.node(id);
      const kind = (steps.find((s) => s.id === id) || {}).kind || "";
      const status = statuses ? statuses[id] || "PENDING" : null;
      const node = svgEl("g", { class: status ? `node st-${status}` : "node def", "data-step": id, "data-kind": kind, ...(status ? { "data-status": status } : {}), tabindex: 0, role: "button", transform: `translate(${n.x - n.width / 2},${n.y - n.height / 2})` });
      const title = svgEl("title");
      title.textContent = status ? `${id}: ${status}` : `${id}${kind ? ` (${kind})` : ""}`;
      node.append(title, svgEl("rect", { width: n.width, height: n.height }));
      const name = svgEl("text", { x: 10, y: 17 });
      name.textContent = n.label;
      const st = svgEl("text", { x: 10, y: 33, class: status ? "status" : "status kind" });
      st.textContent = status || kind;
      node.append(name, st);
      node.addEventListener("click", () => onPick(id));
      node.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onPick(id); } });
      svg.append(node);
    }
    wrap.append(svg);
    return wrap;
  }

  function setNodeStatus(root, id, status) {
    for (const node of root.querySelectorAll(".dag .node")) {
      if (node.dataset.step !== id) continue;
      node.setAttribute("class", `node st-${status}`);
      node.dataset.status = status;
      node.querySelector(".status").textContent = status;
      node.querySelector("title").textContent = `${id}: ${status}`;
    }
  }

  // ids of a definition's steps in order, with their requirements
  function definitionSteps(definition) {
    return (definition.steps || []).map((s) => ({ id: s.id, requires: s.requires || [], kind: STEP_KINDS.find((k) => k in s) || "",
      event: typeof s.wait === "string" ? s.wait : s.wait && s.wait.event }));
  }

  // the steps of an execution whose definition is not stored, from its step runs: a
  // step `m` with runs `m[0]`, `m[1]`... is a map (or one given in brief), its runs no
  // boxes of the DAG
  function stepsRead(info) {
    const ids = Object.keys(info.steps);
    const known = new Set(ids);
    const maps = new Set(Object.keys(info.maps || {}));
    for (const sid of ids) {
      const m = /^(.*)\[\d+\]$/.exec(sid);
      if (m && known.has(m[1])) maps.add(m[1]);
    }
    return ids.filter((sid) => { const m = /^(.*)\[\d+\]$/.exec(sid); return !(m && maps.has(m[1])); })
      .map((sid) => ({ id: sid, requires: [], kind: maps.has(sid) ? "map" : "" }));
  }

  // views -------------------------------------------------------------------------------

  // a saved workflow's link goes to its definition; an unsaved one's to its executions
  function workflowLink(x) {
    const wid = encodeURIComponent(x.workflow_id);
    return el("a", { class: "workflow", href: x.version === null ? `#/?workflow=${wid}` : `#/workflows/${wid}` }, x.workflow_id);
  }

  // where an execution in a list came from: its parent (a child), the one it redrives
  function lineage(x) {
    const link = (cls, said, eid) => el("div", { class: `muted lineage ${cls}` }, said,
      el("a", { href: `#/executions/${encodeURIComponent(eid)}` }, eid));
    return [x.parent_id && link("of-parent", "child of ", x.parent_id),
      x.redrive_of && link("of-redriven", "redrives ", x.redrive_of)].filter(Boolean);
  }

  function setNav(section) {
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  async function executionsView(params) {
    setNav("executions");
    const state = { workflow: params.get("workflow") || "", status: params.get("status") || "", cursors: [] , before: null };
    const workflows = await api("GET", "api/workflows").catch(() => ({ items: [] }));
    const wfSelect = el("select", { name: "workflow", id: "filter-workflow" },
      el("option", { value: "" }, "All workflows"),
      workflows.items.map((w) => el("option", { value: w.id }, w.id)));
    const stSelect = el("select", { name: "status", id: "filter-status" },
      el("option", { value: "" }, "All statuses"),
      ["PENDING", "RUNNING", "SUSPEND", "COMPENSATING", "SUCCESS", "FAILURE", "ABORTED"].map((s) => el("option", { value: s }, s)));
    if (state.workflow && !workflows.items.some((w) => w.id === state.workflow)) {
      wfSelect.append(el("option", { value: state.workflow }, state.workflow)); // not saved
    }
    wfSelect.value = state.workflow;
    stSelect.value = state.status;
    const body = el("tbody", { id: "executions" });
    const newer = el("button", { type: "button", id: "newer" }, "← Newer");
    const older = el("button", { type: "button", id: "older" }, "Older →");
    const info = el("span", { class: "muted" });
    fill(main,
      el("h1", {}, "Executions"),
      el("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
        el("label", {}, "Workflow", wfSelect), el("label", {}, "Status", stSelect),
        el("span", { class: "live", "aria-live": "polite" }, "statuses refresh every 2 s")),
      el("table", {}, el("thead", {}, el("tr", {}, ["Execution", "Workflow", "Version", "Status", "Created", "Updated", "Error or note"].map((h) => el("th", { scope: "col" }, h)))), body),
      el("div", { class: "pager" }, newer, older, info));

    let next = null;
    let timer = null;
    async function load() {
      const q = new URLSearchParams({ limit: "25" });
      if (state.workflow) q.set("workflow_id", state.workflow);
      if (state.status) q.set("status", state.status);
      if (state.before) q.set("before", state.before);
      const page = await api("GET", `api/executions?${q}`);
      showAlert(""); // the store answered again
      next = page.next;
      body.replaceChildren(...page.items.map((x) => el("tr", { dataset: { executionId: x.id } },
        el("td", { class: "id" }, el("a", { href: `#/executions/${encodeURIComponent(x.id)}` }, x.id), ...lineage(x)),
        el("td", {}, workflowLink(x)),
        el("td", {}, x.version === null ? "—" : String(x.version)),
        el("td", {}, badge(x.status, { dataset: { status: x.status } })),
        el("td", {}, when(x.created_at)), el("td", {}, when(x.updated_at)),
        el("td", { class: "err" }, x.error ? el("div", { title: x.error }, x.error)
          : el("div", { class: "muted", title: x.note || "" }, x.note || "")))));
      if (!page.items.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No executions.")));
      newer.disabled = state.cursors.length === 0;
      older.disabled = !next;
      info.textContent = state.cursors.length ? `page ${state.cursors.length + 1}` : "";
    }
    function refresh() {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        if (document.visibilityState === "visible") await load().catch((e) => showAlert(e.message));
        refresh();
      }, LIST_REFRESH_MS);
    }
    function restart() {
      state.cursors = []; state.before = null;
      // the filters in the address: a reload or a shared link keeps them
      const q = new URLSearchParams();
      if (state.workflow) q.set("workflow", state.workflow);
      if (state.status) q.set("status", state.status);
      history.replaceState(null, "", `#/${q.toString() ? "?" + q : ""}`);
      load().catch((e) => showAlert(e.message));
    }
    wfSelect.addEventListener("change", () => { state.workflow = wfSelect.value; restart(); });
    stSelect.addEventListener("change", () => { state.status = stSelect.value; restart(); });
    older.addEventListener("click", () => { state.cursors.push(state.before); state.before = next; load().catch((e) => showAlert(e.message)); });
    newer.addEventListener("click", () => { state.before = state.cursors.pop() || null; load().catch((e) => showAlert(e.message)); });
    cleanup.push(() => clearTimeout(timer));
    await load();
    refresh();
  }

  async function executionView(id) {
    setNav("executions");
    // a map of many runs comes in brief (its counts, its failed runs) until "Show all":
    // 10,000 runs are megabytes of requests and responses
    let brief = true;
    const readPath = () => `api/executions/${encodeURIComponent(id)}${brief ? `?map_runs=${MAP_ROWS}` : ""}`;
    let info = await api("GET", readPath());
    let steps = stepsRead(info);
    let unsaved = "";
    try { // the definition stored with the execution, saved as a workflow or not
      steps = definitionSteps(await api("GET", `api/executions/${encodeURIComponent(id)}/definition`));
    } catch (err) { // steps that cannot be saved as data: the steps without arrows
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      unsaved = "The definition of this execution is not stored: requirements are not drawn.";
    }
    const status = badge(info.status, { id: "execution-status", dataset: { status: info.status } });
    const live = el("span", { class: "live", id: "live", "aria-live": "polite" });
    const error = el("dd", { class: "error", id: "execution-error" }, info.error || "");
    const updated = el("dd", { id: "execution-updated" }, when(info.updated_at));
    const note = el("dd", { id: "execution-note" }, info.note || "");
    const noteTerm = el("dt", {}, "Note");
    // the executions that redrive this one, newest first (a redrive may come later)
    const redrivenTerm = el("dt", { hidden: true }, "Redriven by");
    const redrivenBy = el("dd", { id: "redriven-by", hidden: true });
    async function renderRedrives() {
      if (!["FAILURE", "ABORTED"].includes(info.status)) return; // only those start anew
      const page = await api("GET", `api/executions?${new URLSearchParams({ redrive_of: id, limit: "20" })}`);
      const links = page.items.map((x) => el("a", { class: "redriven-by", href: `#/executions/${encodeURIComponent(x.id)}` }, x.id));
      fill(redrivenBy, links.flatMap((a, i) => (i ? [", ", a] : [a])), page.next ? ", …" : null);
      redrivenBy.hidden = redrivenTerm.hidden = !links.length;
    }
    const actions = el("div", { class: "toolbar", role: "toolbar", "aria-label": "Actions" });
    const dagBox = el("div", { id: "dag-box" });
    const stepBox = el("div", { class: "steps", id: "steps" });
    const messages = el("div", { class: "two", id: "messages" });
    fill(main,
      el("h1", {}, "Execution ", el("span", { class: "id" }, info.id)),
      el("dl", { class: "meta" },
        el("dt", {}, "Status"), el("dd", {}, status, live),
        el("dt", {}, "Workflow"), el("dd", {}, workflowLink(info), info.version === null ? " (unsaved)" : ` version ${info.version}`),
        el("dt", {}, "Created"), el("dd", {}, when(info.created_at)),
        el("dt", {}, "Updated"), updated,
        info.deadline_at ? [el("dt", {}, "Deadline"), el("dd", {}, when(info.deadline_at))] : null,
        noteTerm, note,
        info.redrive_of ? [el("dt", {}, "Redrive of"), el("dd", {}, el("a", { class: "redrive-of", href: `#/executions/${encodeURIComponent(info.redrive_of)}` }, info.redrive_of))] : null,
        info.parent_id ? [el("dt", {}, "Parent"), el("dd", {}, el("a", { class: "parent", href: `#/executions/${encodeURIComponent(info.parent_id)}` }, info.parent_id))] : null,
        redrivenTerm, redrivenBy,
        el("dt", {}, "Error"), error),
      actions, el("h2", {}, "Steps"), unsaved ? el("p", { class: "muted" }, unsaved) : null,
      dagBox, el("h2", {}, "Request and response"), messages, el("h2", {}, "Step runs"), stepBox);

    const kinds = Object.fromEntries(steps.map((s) => [s.id, s.kind]));
    // a map step's runs (`<map id>[<i>]`) by map, in element order, kept as runs come
    let runIndex = {};
    const runAt = (r) => parseInt(r.slice(r.lastIndexOf("[") + 1), 10);
    function mapOf(sid) {
      const m = /^(.*)\[\d+\]$/.exec(sid);
      return m && kinds[m[1]] === "map" ? m[1] : null;
    }
    function indexRuns() {
      runIndex = {};
      for (const sid of Object.keys(info.steps)) {
        const m = mapOf(sid);
        if (m) (runIndex[m] = runIndex[m] || []).push(sid);
      }
      for (const runs of Object.values(runIndex)) runs.sort((a, b) => runAt(a) - runAt(b));
    }
    function addRun(m, sid) {
      const runs = runIndex[m] = runIndex[m] || [];
      const i = runAt(sid);
      let lo = 0, hi = runs.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (runAt(runs[mid]) < i) lo = mid + 1; else hi = mid; }
      runs.splice(lo, 0, sid);
    }
    function runsOf(sid) {
      return runIndex[sid] || [];
    }
    // the server's brief of a map of many runs (its counts, the runs it lists), if any
    function briefOf(m) {
      return (info.maps && info.maps[m]) || null;
    }
    // a map of many runs shows their counts and its failed runs, unless "Show all"
    const expanded = new Set();
    function collapsed(m) {
      return Boolean(briefOf(m)) || (runsOf(m).length > MAP_ROWS && !expanded.has(m));
    }
    function notable(run) {
      const comp = run.compensation && run.compensation.status;
      return run.status === "FAILURE" || run.status === "COMPENSATING" ||
        comp === "FAILURE" || comp === "COMPENSATING" || comp === "RUNNING";
    }
    function notableRuns(m) {
      return runsOf(m).filter((r) => notable(info.steps[r]));
    }
    function shownRuns(m) {
      const b = briefOf(m);
      if (b) return b.listed.filter((r) => info.steps[r]);
      return collapsed(m) ? notableRuns(m).slice(0, LISTED) : runsOf(m);
    }
    function stepOrder() {
      const out = [];
      for (const s of steps) { out.push(s.id); if (kinds[s.id] === "map") out.push(...shownRuns(s.id)); }
      const seen = new Set(out);
      return out.concat(Object.keys(info.steps).filter((s) => !seen.has(s) && !mapOf(s)));
    }
    function pick(sid) {
      const card = document.getElementById(`step-${sid}`);
      if (card) { card.scrollIntoView({ block: "nearest" }); card.focus(); }
      for (const n of dagBox.querySelectorAll(".node")) n.classList.toggle("selected", n.dataset.step === sid);
    }
    function statuses() {
      return Object.fromEntries(Object.entries(info.steps).map(([sid, run]) => [sid, run.status]));
    }
    dagBox.replaceChildren(drawDag(steps, statuses(), pick));

    function stepCard(sid, run) {
      run = run || { status: "PENDING", attempts: 0, request: null, response: null, error: null, started_at: null, finished_at: null, compensation: null };
      const comp = run.compensation;
      const ofMap = /^(.*)\[\d+\]$/.exec(sid);
      const isRun = Boolean(ofMap && kinds[ofMap[1]] === "map");
      return el("section", { class: `step st-${run.status}${isRun ? " run" : ""}`, id: `step-${sid}`, tabindex: "-1", dataset: { step: sid, status: run.status }, "aria-label": `Step ${sid}` },
        el("header", {}, el("span", { class: "name" }, sid), badge(run.status),
          el("span", { class: "times" }, `attempts ${run.attempts}`),
          run.started_at ? el("span", { class: "times" }, `started ${when(run.started_at)}`) : null,
          run.finished_at ? el("span", { class: "times" }, `took ${seconds(run.started_at, run.finished_at)}`) : null),
        kinds[sid] === "workflow" && run.status !== "PENDING" && run.status !== "SKIPPED"
          ? el("p", {}, "Child execution: ", el("a", { class: "child", href: `#/executions/${encodeURIComponent(`${id}:${sid}`)}` }, `${id}:${sid}`)) : null,
        kinds[sid] === "map" ? mapSummary(sid) : null,
        run.error ? el("p", { class: "error" }, run.error) : null,
        run.started_at ? el("div", { class: "two" }, jsonBlock("Request", run.request), jsonBlock("Response", run.response)) : null,
        comp ? el("div", { class: "comp", dataset: { compensation: comp.status } }, "Compensation: ", badge(comp.status),
          el("span", { class: "times" }, ` attempts ${comp.attempts} ${comp.finished_at ? "took " + seconds(comp.started_at, comp.finished_at) : ""}`),
          comp.error ? el("p", { class: "error" }, comp.error) : null) : null);
    }
    function mapSummary(sid) {
      const b = briefOf(sid);
      const runs = runsOf(sid);
      let total = runs.length;
      let counts = {};
      if (b) { total = b.runs; counts = b.statuses; }
      else for (const r of runs) counts[info.steps[r].status] = (counts[info.steps[r].status] || 0) + 1;
      const line = el("p", { class: "runs muted" }, `${total} run${total === 1 ? "" : "s"}`,
        Object.entries(counts).flatMap(([st, n]) => [" ", badge(st), ` ${n}`]));
      if (total <= MAP_ROWS) return line;
      const open = expanded.has(sid);
      const failed = open ? 0 : b ? b.notable : notableRuns(sid).length;
      const toggle = el("button", { type: "button", class: "show-runs", "aria-expanded": String(open) },
        open ? "Show failed runs only" : `Show all ${total} runs`);
      toggle.addEventListener("click", async () => {
        if (open) expanded.delete(sid); else expanded.add(sid);
        if (b) { // every run read now, and followed from then on
          toggle.disabled = true;
          brief = false;
          try { info = await api("GET", readPath()); } catch (e) { showAlert(e.message); brief = true; expanded.delete(sid); toggle.disabled = false; return; }
          renderAll();
          follow();
        } else renderSteps();
        const again = document.getElementById(`step-${sid}`);
        if (again) again.querySelector(".show-runs").focus();
      });
      return [line, el("p", { class: "runs-shown muted" },
        open ? "Every run is shown below. " : failed > LISTED
          ? `The first ${LISTED} of ${failed} failed or undoing runs are shown below. `
          : failed ? `Its failed or undoing runs are shown below. ` : "", toggle)];
    }
    // one step's card anew, in its place; the other cards (opened bodies) stay.
    // order: the cards' order, read once for the changes drawn together
    function putCard(sid, order) {
      const card = stepCard(sid, info.steps[sid]);
      const old = document.getElementById(`step-${sid}`);
      if (old) { keepingOpen(old, () => old.replaceWith(card)); return; }
      const all = order ? order() : stepOrder();
      let after = null;
      for (let i = all.indexOf(sid) + 1; i < all.length && !after; i++) after = document.getElementById(`step-${all[i]}`);
      stepBox.insertBefore(card, after);
    }
    // a collapsed map's cards: its failed runs shown, the others taken away
    function syncRuns(m, changed, order) {
      const shown = new Set(shownRuns(m));
      for (const card of stepBox.querySelectorAll(".step.run")) {
        if (mapOf(card.dataset.step) === m && !shown.has(card.dataset.step)) card.remove();
      }
      for (const r of shown) if (changed.has(r) || !document.getElementById(`step-${r}`)) putCard(r, order);
    }
    function sameRun(a, b) {
      const fields = (r) => [r.status, r.attempts, r.started_at, r.finished_at, r.error];
      const ca = a.compensation, cb = b.compensation;
      return JSON.stringify([fields(a), ca && fields(ca)]) === JSON.stringify([fields(b), cb && fields(cb)]);
    }
    // the steps changed live, drawn together: a map of 10,000 runs sends 10,000 events
    const dirty = new Set();
    let redraw = null;
    // sid: a step, or null for the execution's head
    function changed(sid) {
      dirty.add(sid);
      if (!redraw) redraw = setTimeout(drawChanged, REDRAW_MS);
    }
    function drawChanged() {
      redraw = null;
      const ids = new Set(dirty);
      dirty.clear();
      const head = ids.delete(null);
      let cached = null;
      const order = () => cached || (cached = stepOrder());
      const maps = new Set();
      for (const sid of ids) {
        const m = mapOf(sid);
        if (m) maps.add(m);
        else if (info.steps[sid]) setNodeStatus(dagBox, sid, info.steps[sid].status);
        if (briefOf(sid)) maps.add(sid); // its brief changed
        else if (!m || !collapsed(m)) putCard(sid, order);
      }
      for (const m of maps) {
        if (collapsed(m)) syncRuns(m, ids, order);
        if (info.steps[m]) putCard(m, order); // its counts
      }
      if (head) renderHead();
    }
    // cards drawn anew: the bodies the operator opened stay open
    function keepingOpen(root, change) {
      const key = (d) => `${d.closest(".step").id}/${d.querySelector("summary").textContent}`;
      const opened = new Set([...root.querySelectorAll("details[open]")].map(key));
      change();
      if (opened.size) for (const d of stepBox.querySelectorAll("details")) if (opened.has(key(d))) d.open = true;
    }
    function renderSteps() {
      keepingOpen(stepBox, () => stepBox.replaceChildren(...stepOrder().map((sid) => stepCard(sid, info.steps[sid]))));
    }
    function renderMessages() {
      messages.replaceChildren(jsonBlock("Request", info.request, true), jsonBlock("Response", info.response, true));
    }
    function renderHead() {
      status.textContent = info.status;
      status.className = `badge st-${info.status}`;
      status.dataset.status = info.status;
      error.textContent = info.error || "";
      updated.textContent = when(info.updated_at);
      note.textContent = info.note || "";
      note.hidden = noteTerm.hidden = !info.note; // why it waits for a worker, while it does
      renderActions();
    }

    function act(path, body) {
      return async () => {
        const answer = await api("POST", `api/executions/${encodeURIComponent(id)}/${path}`, body);
        if (answer.id !== id) { location.hash = `#/executions/${encodeURIComponent(answer.id)}`; return; }
        info = brief ? await api("GET", readPath()) : answer; // its maps in brief again
        renderAll();
        follow();
      };
    }
    // stopped, and no step still running (a suspended execution's steps finish)
    function settled() {
      return STOPPED.has(info.status) && !Object.values(info.steps).some((r) =>
        r.status === "RUNNING" || (r.compensation && r.compensation.status === "RUNNING")) &&
        !Object.values(info.maps || {}).some((b) => b.statuses.RUNNING || b.compensations.RUNNING);
    }
    function compensationFailed() {
      return Object.values(info.steps).some((r) => r.compensation && r.compensation.status === "FAILURE") ||
        Object.values(info.maps || {}).some((b) => b.compensations.FAILURE);
    }
    // the event a WAITING wait step waits for: what a signal most likely delivers
    function awaited() {
      const waiting = steps.find((x) => x.kind === "wait" && x.event && info.steps[x.id] && info.steps[x.id].status === "WAITING");
      return waiting ? waiting.event : undefined;
    }
    function renderActions() {
      const s = info.status;
      const running = !STOPPED.has(s) && s !== "COMPENSATING";
      const button = (action, label, enabled, onClick, cls) => el("button", { type: "button", dataset: { action }, disabled: !enabled, class: cls, onclick: onClick }, label);
      actions.replaceChildren(
        button("suspend", "Suspend", running, () => confirmAction({ title: "Suspend this execution?", text: "No new step starts; running steps finish and are recorded.", ok: "Suspend", run: act("suspend") })),
        button("resume", "Resume", s === "SUSPEND" || (s === "FAILURE" && compensationFailed()), () => confirmAction({ title: "Resume this execution?", text: s === "FAILURE" ? "Retries its failed compensations." : "It continues from where it stopped.", ok: "Resume", run: act("resume") })),
        button("abort", "Abort…", !["SUCCESS", "FAILURE", "ABORTED"].includes(s), () => confirmAction({
          title: "Abort this execution?", text: "No new step starts; running steps finish. Then, unless you choose otherwise, what it did is compensated.", ok: "Abort",
          fields: [{ name: "compensate", label: "Roll back", kind: "select", options: [["yes", "Compensate the steps that succeeded"], ["no", "Stop without compensating"]] }],
          run: (v) => act("abort", { compensate: v.compensate === "yes" })() }), "danger"),
        // a sub-workflow's finished child is redriven through its parent (the API refuses it)
        button("redrive", "Redrive…", s === "SUSPEND" || (["FAILURE", "ABORTED"].includes(s) && !info.parent_id), () => confirmAction({
          title: "Redrive this execution", text: "Runs the failed steps again (a suspended execution) or the whole execution anew (a finished one), with this input.", ok: "Redrive",
          fields: [
            // a finished execution is redriven whole: only a suspended one takes a step
            s === "SUSPEND" ? { name: "step", label: "Step (empty: every failed step)", kind: "text", value: "" } : null,
            { name: "input", label: "Input (JSON; empty: the same request)", kind: "json", value: JSON.stringify(info.request, null, 2) }],
          run: (v) => act("redrive", { ...(v.step ? { step: v.step } : {}), ...(v.input !== undefined ? { input: v.input } : {}) })() })),
        button("signal", "Signal…", !["SUCCESS", "FAILURE", "ABORTED"].includes(s), () => confirmAction({
          title: "Signal this execution", text: "Delivers an event to the steps waiting for it.", ok: "Send",
          fields: [{ name: "event", label: "Event", kind: "text", required: true, value: awaited() }, { name: "payload", label: "Payload (JSON)", kind: "json", value: "" }],
          run: (v) => act("signal", { event: v.event, ...(v.payload !== undefined ? { payload: v.payload } : {}) })() })));
    }
    function renderAll() {
      clearTimeout(redraw); redraw = null; dirty.clear(); // all of it drawn now
      indexRuns();
      renderHead();
      renderRedrives().catch(() => {}); // a link the more; the page stands without it
      dagBox.replaceChildren(drawDag(steps, statuses(), pick));
      renderSteps();
      renderMessages();
    }
    renderAll();

    // live updates
    let stop = null;
    let retry = null;
    function follow() {
      if (stop) stop();
      clearTimeout(retry);
      if (settled()) {
        live.textContent = "";
        // a suspended execution has no stream: resumed or redriven elsewhere, it shows
        if (info.status === "SUSPEND") retry = setTimeout(watchSuspended, SUSPENDED_POLL_MS);
        return;
      }
      live.textContent = "live";
      const query = brief ? `?map_runs=${MAP_ROWS}` : "";
      stop = subscribe(`api/executions/${encodeURIComponent(id)}/events${query}`, (type, data) => {
        if (type === "execution") {
          if (data.status === info.status && data.error === info.error && data.updated_at === info.updated_at) return;
          Object.assign(info, { status: data.status, error: data.error, updated_at: data.updated_at });
          changed(null); // its head, drawn with its steps: the page never shows half
        } else if (type === "step") {
          const m = mapOf(data.step_id);
          const had = info.steps[data.step_id];
          if (had && sameRun(had, data.step)) return; // a stream starts with what was read
          if (m && !had) addRun(m, data.step_id);
          info.steps[data.step_id] = data.step;
          changed(data.step_id);
        } else if (type === "map" && info.maps) { // a map of many runs, in brief
          const m = data.step_id;
          info.maps[m] = data.runs;
          const listed = new Set(data.runs.listed);
          for (const r of runsOf(m)) if (!listed.has(r)) delete info.steps[r]; // no longer followed
          runIndex[m] = runsOf(m).filter((r) => listed.has(r));
          if (!kinds[m]) kinds[m] = "map"; // a definition not stored: its first brief
          changed(m);
        }
      }, async (ended, err) => {
        live.textContent = "";
        if (err) { showAlert(err.message); return; }
        if (ended) {
          reread();
        } else {
          retry = setTimeout(follow, 2000); // the connection dropped: the stream starts with the current state
        }
      });
    }
    async function watchSuspended() {
      let now = null;
      const asked = brief;
      try { now = await api("GET", readPath()); } catch (e) { /* next time */ }
      if (asked !== brief) return; // "Show all" read it meanwhile, and follows it
      if (now && (now.status !== info.status || now.updated_at !== info.updated_at)) {
        info = now;
        renderAll();
        follow();
      } else retry = setTimeout(watchSuspended, SUSPENDED_POLL_MS);
    }
    // the whole execution read again (its response comes with no event)
    async function reread() {
      const asked = brief;
      try {
        const now = await api("GET", readPath());
        if (asked !== brief) return; // "Show all" read it meanwhile, and follows it
        info = now;
      } catch (e) { // the store away: say so, read it again soon
        showAlert(e.message);
        retry = setTimeout(reread, 2000);
        return;
      }
      showAlert("");
      renderAll();
      follow(); // resumed meanwhile: follow again
    }
    cleanup.push(() => { if (stop) stop(); clearTimeout(retry); clearTimeout(redraw); });
    follow();
  }

  async function workflowsView() {
    setNav("workflows");
    const list = await api("GET", "api/workflows");
    fill(main,
      el("h1", {}, "Workflows"),
      el("table", {}, el("thead", {}, el("tr", {}, ["Workflow", "Version", "Steps", "Description"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", { id: "workflows" }, list.items.length ? list.items.map((w) => el("tr", { dataset: { workflowId: w.id } },
          el("td", { class: "id" }, el("a", { href: `#/workflows/${encodeURIComponent(w.id)}` }, w.id)),
          el("td", {}, String(w.version)), el("td", {}, String(w.step_count)), el("td", {}, w.description || "")))
          : el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No saved workflows.")))));
  }

  async function workflowView(id, params) {
    setNav("workflows");
    const latest = await api("GET", `api/workflows/${encodeURIComponent(id)}`);
    const all = await api("GET", "api/workflows");
    const top = (all.items.find((w) => w.id === id) || { version: 1 }).version;
    const version = Number(params.get("version")) || top;
    const def = version === top ? latest : await api("GET", `api/workflows/${encodeURIComponent(id)}?version=${version}`);
    const select = el("select", { id: "version" }, Array.from({ length: top }, (_, i) => top - i).map((v) => el("option", { value: v }, `version ${v}${v === top ? " (latest)" : ""}`)));
    select.value = String(version);
    select.addEventListener("change", () => { location.hash = `#/workflows/${encodeURIComponent(id)}?version=${select.value}`; });
    const start = el("button", { type: "button", class: "primary", id: "start", disabled: version !== top }, "Start execution…");
    start.addEventListener("click", () => confirmAction({
      title: `Start ${id}`, text: "A new execution of the latest version, with this input.", ok: "Start",
      fields: [{ name: "input", label: "Input (JSON)", kind: "json", value: "{}" }],
      run: async (v) => {
        const started = await api("POST", `api/workflows/${encodeURIComponent(id)}/executions`, v.input === undefined ? {} : { input: v.input });
        location.hash = `#/executions/${encodeURIComponent(started.id)}`;
      } }));
    fill(main,
      el("h1", {}, "Workflow ", el("span", { class: "id" }, id)),
      el("div", { class: "toolbar" }, el("label", {}, "Version", select), start,
        el("a", { href: `#/?workflow=${encodeURIComponent(id)}` }, "Its executions")),
      def.description ? el("p", {}, def.description) : null,
      drawDag(definitionSteps(def), null, () => {}),
      el("h2", {}, "Definition"), jsonBlock("JSON", def, true));
  }

  // routing -----------------------------------------------------------------------------

  async function route() {
    for (const stop of cleanup.splice(0)) stop();
    // an action asked about the page left must not run on the next one
    const confirmDialog = document.getElementById("confirm-dialog");
    if (confirmDialog.open) confirmDialog.close("cancel");
    showAlert("");
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    try {
      if (parts[0] === "executions" && parts[1]) await executionView(parts[1]);
      else if (parts[0] === "workflows" && parts[1]) await workflowView(parts[1], params);
      else if (parts[0] === "workflows") await workflowsView();
      else await executionsView(params);
    } catch (err) {
      const away = err instanceof ApiError && err.status === 503;
      fill(main, el("h1", {}, "Cannot show this page"), el("p", { class: "error" }, err.message),
        away ? el("p", { class: "muted", id: "retrying" }, "The store is unavailable: trying again every 2 s.") : null);
      if (away) { // the store comes back: the page shows by itself
        const timer = setTimeout(route, LIST_REFRESH_MS);
        cleanup.push(() => clearTimeout(timer));
      }
    }
    document.title = `microsaga ${parts.join(" ")}`.trim();
  }

  document.getElementById("token-button").addEventListener("click", async () => { await askToken(); route(); });
  window.addEventListener("hashchange", route);
  route();
})();
