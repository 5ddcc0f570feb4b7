"use strict";
// The controller's live page.  Every second it reads the REST API of the controller that served
// it (same origin): /v1/topology, /v1/switches, /v1/apps, and the GET endpoints of each loaded
// function app; then it redraws the topology (SVG) and one panel per function.
// Plain JS, no dependencies, nothing fetched from anywhere else.
(() => {
  const POLL_MS = 1000;      // one poll per second (start to start)
  const TIMEOUT_MS = 4000;   // a request taking longer counts as failed
  const SVGNS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- helpers
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
  const clock = (t) => (typeof t === "number" ? new Date(t * 1000).toLocaleTimeString() : esc(t));
  const yes = (v, good = true) => (v ? `<span class="${good ? "ok" : "bad"}">yes</span>`
                                     : `<span class="${good ? "bad" : "ok"}">no</span>`);
  const pills = (xs) => (xs || []).map((x) => `<span class="pill">${esc(x)}</span>`).join("") || "–";
  const hex = (n) => (typeof n === "number" ? "0x" + n.toString(16) : esc(n));
  const attrs = (o) => Object.entries(o).map(([k, v]) => `${k}="${esc(v)}"`).join(" ");
  // an NQN's last part (the full name in the tooltip)
  const nqn = (s) => (s ? `<span class="mono" title="${esc(s)}">${esc(String(s).split(":").pop())}</span>` : "–");

  // rows: arrays of HTML cells, or {attrs: {...}, cells: [...]} for a row with attributes
  function table(head, rows, empty = "none") {
    if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
    const tr = (r) => (Array.isArray(r) ? `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`
      : `<tr ${attrs(r.attrs)}>${r.cells.map((c) => `<td>${c}</td>`).join("")}</tr>`);
    return `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>`
      + `<tbody>${rows.map(tr).join("")}</tbody></table>`;
  }

  // GET a JSON resource: {data} or {error}; never throws (a failed request is shown, not logged)
  const failures = [];
  async function get(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { cache: "no-store", signal: ctl.signal, headers: { Accept: "application/json" } });
      if (!r.ok) { failures.push(`${path}: ${r.status}`); return { error: r.status }; }
      return { data: await r.json() };
    } catch (e) {
      failures.push(`${path}: ${e.name === "AbortError" ? "timeout" : "unreachable"}`);
      return { error: e.name };
    } finally {
      clearTimeout(timer);
    }
  }
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- function apps
  // Each: load() reads the app's own GET endpoints (only ever called when the app is loaded),
  // render(view) returns the panel's HTML.  Only endpoints that answer 200 are asked for.
  const cache = {};
  const FUNCS = {
    oam_ecmp: {
      title: "OAM ECMP verification",
      async load() {
        const [reps, status] = await Promise.all([get("/v1/oam/ecmp/reports"), get("/v1/oam/ecmp/status")]);
        const list = Array.isArray(reps.data) ? reps.data : [];
        let report = null;
        if (list.length) {  // the newest report, read again only when a new one appears
          const last = list[list.length - 1];
          if (cache.oam && cache.oam.id === last.id && cache.oam.started === last.started) report = cache.oam;
          else report = cache.oam = (await get(`/v1/oam/ecmp/reports/${enc(last.id)}`)).data || null;
        }
        if (!report && !cache.oamExpected) cache.oamExpected = (await get("/v1/oam/ecmp/expected")).data || null;
        return { list, status: status.data, report, expected: cache.oamExpected };
      },
      render(v) {
        const s = v.status || {};
        let out = `<p>${s.running ? '<span class="warn">verification running</span>' : "idle"}; `
          + `${esc(s.reports_kept ?? v.list.length)} report(s) kept</p>`;
        const r = v.report;
        if (!r) {
          out += '<p class="note">no verification yet (POST /v1/oam/ecmp/verify); expected ECMP paths:</p>';
          const pairs = (v.expected && v.expected.pairs) || [];
          return out + table(["pair", "expected paths"], pairs.map((p) => [
            `${esc(p.src)} → ${esc(p.dst)}`, (p.paths || []).map((x) => `<code>${esc(x)}</code>`).join("<br>")]));
        }
        const t = r.totals || {};
        out += `<h3>report #${esc(r.id)} at ${clock(r.started)}: ${esc(t.pairs)} pairs, `
          + `<span class="ok">${esc(t.ok)} ok</span>, <span class="${t.faulty ? "bad" : "ok"}">${esc(t.faulty)} with findings</span>`
          + `${t.not_launched ? `, ${esc(t.not_launched)} not launched` : ""}</h3>`;
        out += table(["pair", "family", "verdict", "expected", "observed paths", "findings"], (r.pairs || []).map((p) => [
          `${esc(p.src)} → ${esc(p.dst)}`, esc(p.family),
          `<span class="${p.verdict === "ok" ? "ok" : "bad"}">${esc(p.verdict)}</span>`,
          esc((p.expected || []).length),
          (p.observed || []).map((x) => `<code>${esc(x)}</code>`).join("<br>") || "–", pills(p.findings)]));
        const f = r.findings || [];
        if (f.length) {
          out += "<h3>findings</h3>" + table(["class", "pair", "where", "detail"], f.slice(0, 50).map((x) => [
            `<span class="bad">${esc(x.class)}</span>`, esc((x.pair || []).join(" → ") + " " + (x.family || "")),
            esc([x.switch, x.port != null ? `port ${x.port}` : "", x.group ? `group ${x.group}` : ""].filter(Boolean).join(" ")),
            esc(x.detail)]));
        }
        return out;
      },
    },

    multicast_standby: {
      title: "Multicast standby paths",
      async load() {
        const [ch, sb] = await Promise.all([get("/v1/multicast/channels"), get("/v1/multicast/standby")]);
        const chans = Array.isArray(ch.data) ? ch.data : [];
        const trees = await Promise.all(chans.slice(0, 16).map(
          (c) => get(`/v1/multicast/channels/${enc(c.source)}/${enc(c.group)}/tree`)));
        return { chans, trees: trees.map((t) => t.data).filter(Boolean), standby: Array.isArray(sb.data) ? sb.data : [] };
      },
      render(v) {
        if (!v.chans.length) return '<p class="empty">no channel yet (a source starts sending to a group)</p>';
        const path = (p) => (p && p.devices ? `<code>${esc(p.devices.join(" → "))}</code>` : "–");
        const ok = (c, d, k) => { const e = (c.destinations || {})[d] || {}; return e[k] === false ? ' <span class="bad">broken</span>' : ""; };
        let out = "<h3>active trees</h3>" + table(["channel (S, G)", "source", "tree (from:port → to:port)", "destinations"],
          v.trees.map((t) => [`${esc(t.source)}, ${esc(t.group)}`, esc(t.source_switch),
            (t.tree || []).map((e) => `<code>${esc(e.from)}:${esc(e.out_port)} → ${esc(e.to)}:${esc(e.in_port)}</code>`).join("<br>") || "–",
            pills(t.tree_destinations)]));
        const byKey = Object.fromEntries(v.chans.map((c) => [`${c.source} ${c.group}`, c]));
        out += "<h3>active and standby paths per destination</h3>" + table(
          ["channel", "destination", "active path", "standby path", "disjoint", "request", "failovers", "note"],
          v.standby.map((s) => {
            const c = byKey[`${s.source} ${s.group}`] || {};
            return [`${esc(s.source)}, ${esc(s.group)}`, esc(s.destination),
              path(s.active) + (s.active_kind && s.active_kind !== "tree" ? ` <span class="warn">${esc(s.active_kind)}</span>` : "") + ok(c, s.destination, "active_ok"),
              path(s.standby) + ok(c, s.destination, "standby_ok"),
              s.disjoint == null ? "–" : yes(s.disjoint),
              s.pending_request ? `#${esc(s.pending_request.request_id)} (${esc(s.pending_request.age_ms)} ms)` : "–",
              esc(s.failovers), esc(s.note)];
          }));
        return out;
      },
    },

    fenced_clone: {
      title: "Fenced clones",
      async load() { return { fences: (await get("/v1/fences")).data || [] }; },
      render(v) {
        if (!v.fences.length) return '<p class="empty">no fence</p>';
        const addr = (a) => (a ? `${esc(a.clone)} as ${esc(a.parent)}` : "");
        return table(["fence", "parent", "members (component: host @ switch:port, clone as parent)", "egress", "flows"],
          v.fences.map((f) => [`<b>${esc(f.name)}</b>`, pills(f.parent),
            (f.members || []).map((m) => `${esc(m.component)}: ${esc(m.host)} @ ${esc(m.switch)}:${esc(m.port)} `
              + `<span class="mono">${[addr(m.ipv4), addr(m.ipv6)].filter(Boolean).join(", ")}</span>`).join("<br>") || "–",
            `<code>${esc(JSON.stringify(f.egress))}</code>`, esc(f.flows)]));
      },
    },

    cloud_router: {
      title: "Cloud router",
      async load() {
        const [sum, cl, pol] = await Promise.all([get("/v1/cloud_router"), get("/v1/cloud_router/clients"),
          get("/v1/cloud_router/policies")]);
        // /nacs answers 409 while no tiers are set: only asked for when there are
        const nacs = sum.data && sum.data.tiers ? (await get("/v1/cloud_router/nacs")).data : null;
        return { sum: sum.data || {}, clients: cl.data || [], policies: pol.data || {}, nacs: nacs || {} };
      },
      render(v) {
        const s = v.sum, t = s.tiers, c = s.clients || {};
        let out = t ? `<p>APs ${pills(t.access_points)} → tunnel devices ${pills(t.tunnel_devices)} → forwarders `
          + `${pills(t.forwarders)} → NACs ${pills(t.nacs)} → uplink ${pills([t.uplink])}</p>`
          : '<p class="note">no tiers set: the cloud router is idle</p>';
        out += `<p>${esc(c.total ?? 0)} clients, ${esc(c.located ?? 0)} located, ${esc(c.quarantined ?? 0)} quarantined; failed NACs: `
          + `${(s.failed_nacs || []).length ? `<span class="bad">${esc(s.failed_nacs.join(", "))}</span>` : "none"}</p>`;
        out += "<h3>clients</h3>" + table(["client", "MAC", "host", "AP (switch:port)", "NAC", "policy", "key", "IPv4"],
          v.clients.map((x) => {
            const loc = x.location, last = x.last_location;
            return { attrs: { "data-client": x.mac, "data-ap": loc ? loc.switch : "" },
              cells: [esc(x.name || "–"), `<span class="mono">${esc(x.mac)}</span>`, esc(x.host || ""),
                loc ? `<b>${esc(loc.switch)}</b>:${esc(loc.port)}`
                  : `<span class="note">not located${last ? ` (last ${esc(last.switch)}:${esc(last.port)})` : ""}</span>`,
                esc(x.nac || "–") + (x.nac_order && x.nac_order.length > 1 ? ` <span class="note">(${esc(x.nac_order.join(" > "))})</span>` : ""),
                x.quarantined ? '<span class="warn">quarantine</span>' : esc(x.policy), esc(x.key), esc(x.ipv4 || "")] };
          }), "no client");
        const rule = (r) => `${r.proto || "any"} ${r.dst || "any"}${r.ports ? ":" + r.ports.join(",") : ""}`;
        out += "<h3>policies</h3>" + table(["policy", "allows", "rate (kbit/s)", "clients"],
          Object.values(v.policies).map((p) => [esc(p.name) + (p.default ? ' <span class="pill">default</span>' : "")
            + (p.builtin ? ' <span class="pill">built in</span>' : ""),
          (p.allow || []).map((r) => `<code>${esc(rule(r))}</code>`).join("<br>") || "–",
          esc([p.rate_kbps, p.down_rate_kbps].filter((x) => x != null).join(" / ") || "–"), esc(p.clients)]));
        const nacs = Object.entries(v.nacs);
        if (nacs.length) {
          out += "<h3>NACs</h3>" + table(["NAC", "state", "connected", "serving", "primary for"], nacs.map(([n, x]) => [
            esc(n), x.failed ? `<span class="bad">failed since ${clock(x.failed_since)}</span>` : '<span class="ok">ok</span>',
            yes(x.connected), esc(x.serving), esc(x.primary_for)]));
        }
        return out;
      },
    },

    proxy_cluster: {
      title: "Proxy clusters",
      async load() { return { clusters: (await get("/v1/proxy-clusters")).data || [] }; },
      render(v) {
        if (!v.clusters.length) return '<p class="empty">no proxy cluster</p>';
        return v.clusters.map((c) => `<h3>${esc(c.name)}: VIP ${esc([c.vip4, c.vip6].filter(Boolean).join(", "))} `
          + `ports ${esc((c.ports || []).join(","))}; pools ${Object.entries(c.pools || {}).map(([p, s]) => `${esc(p)} ${pills(s)}`).join(" ")}</h3>`
          + table(["proxy", "state", "in hash", "health", "last heartbeat", "connections", "servers up", "config current", "why"],
            (c.proxies || []).map((p) => {
              const h = p.health || {};
              return [esc(p.host), esc(p.state) + (p.drain_complete ? " (drained)" : ""), yes(p.in_hash),
                `<span class="${h.state === "up" ? "ok" : h.state === "down" ? "bad" : "warn"}">${esc(h.state)}</span>`,
                h.last_heartbeat_ms_ago == null ? "–" : `${esc(h.last_heartbeat_ms_ago)} ms ago`,
                esc(p.connections ?? "–"), esc(h.servers_up ?? "–"), yes(p.config_current), esc(h.why || "")];
            }))).join("");
      },
    },

    nvme_zoning: {
      title: "NVMe-oF zoning",
      async load() {
        const [z, conns, att] = await Promise.all([get("/v1/nvme"), get("/v1/nvme/connections"), get("/v1/nvme/attempts")]);
        return { zoning: z.data || {}, conns: conns.data || {}, attempts: Array.isArray(att.data) ? att.data : [] };
      },
      render(v) {
        const intent = v.zoning.intent || {}, counters = v.zoning.counters || {};
        let out = `<p>${Object.entries(counters).map(([k, n]) => `<span class="pill">${esc(k)} ${esc(n)}</span>`).join("")}</p>`;
        const zones = [];
        for (const g of intent.zone_groups || []) for (const zn of g.zones || []) zones.push([esc(g.name), esc(zn.name),
          (zn.hosts || []).map(nqn).join(", ") || "–", (zn.subsystems || []).map(nqn).join(", ") || "–"]);
        out += "<h3>zones</h3>" + table(["zone group", "zone", "hosts", "subsystems"], zones, "no zone: nothing is admitted");
        out += "<h3>admitted connections</h3>" + table(["connection", "host NQN", "subsystem", "qid", "host edge", "target edge", "since"],
          (v.conns.admitted || []).map((c) => [`<span class="mono">${esc(c.id)}</span>`
            + (c.closing ? ' <span class="warn">closing</span>' : ""), nqn(c.hostnqn), nqn(c.subnqn), esc(c.qid),
          `${esc(c.host)} @ ${esc(c.switch)}:${esc(c.in_port)}`, `${esc(c.target_switch)}:${esc(c.target_port)}`, clock(c.since)]), "none");
        const pend = v.conns.pending || [];
        if (pend.length) out += `<p class="note">${pend.length} connection(s) pending (Connect not read yet)</p>`;
        out += "<h3>refused attempts and revocations (newest first)</h3>" + table(["time", "event", "host", "host NQN", "subsystem", "why"],
          v.attempts.slice(-20).reverse().map((a) => [clock(a.t), `<span class="bad">${esc(a.event)}</span>`, esc(a.host || "–"),
            nqn(a.hostnqn), nqn(a.subnqn), esc(a.why)]), "none");
        return out;
      },
    },
  };

  // ---------------------------------------------------------------- topology layout
  function bfs(adj, sources) {
    const dist = new Map(sources.map((s) => [s, 0]));
    const queue = [...sources];
    while (queue.length) {
      const n = queue.shift();
      for (const m of adj.get(n)) if (!dist.has(m)) { dist.set(m, dist.get(n) + 1); queue.push(m); }
    }
    return dist;
  }
  const farthest = (names, dist) => names.filter((n) => dist.has(n)).reduce((a, b) => (dist.get(b) > dist.get(a) ? b : a));

  // columns by distance from a peripheral switch (two BFS sweeps), one pass per connected part
  function sweepLayers(names, adj) {
    const layer = new Map();
    for (const n of names) {
      if (layer.has(n)) continue;
      const u = farthest(names, bfs(adj, [n]));
      const v = farthest(names, bfs(adj, [u]));
      for (const [m, d] of bfs(adj, [v])) layer.set(m, d);
    }
    return layer;
  }

  // columns by distance from the switches with hosts (leaf, spine, core...)
  function hostLayers(names, adj, hostSwitches) {
    const src = names.filter((n) => hostSwitches.has(n));
    if (!src.length) return null;
    const d = bfs(adj, src);
    return d.size === names.length ? d : null;
  }

  // the cloud router's tiers, left to right; any other switch in a last column
  function tierLayers(names, tiers) {
    const cols = [tiers.access_points, tiers.tunnel_devices, tiers.forwarders, tiers.nacs, [tiers.uplink]];
    const layer = new Map();
    cols.forEach((col, i) => (col || []).forEach((n) => { if (names.includes(n) && !layer.has(n)) layer.set(n, i); }));
    for (const n of names) if (!layer.has(n)) layer.set(n, cols.length);
    return layer;
  }

  // order each column by its neighbours' mean position (a few sweeps); score: crossings etc.
  function arrange(names, edges, layer) {
    const cols = [];
    for (const n of names) (cols[layer.get(n)] ||= []).push(n);
    const layers = cols.filter(Boolean);
    const col = new Map(), pos = new Map();
    layers.forEach((l, c) => l.forEach((n, i) => { col.set(n, c); pos.set(n, i); }));
    const nbr = new Map(names.map((n) => [n, []]));
    for (const [a, b] of edges) { nbr.get(a).push(b); nbr.get(b).push(a); }
    const order = (c, ref) => {
      const key = new Map(layers[c].map((n) => {
        const ps = nbr.get(n).filter((m) => col.get(m) === ref).map((m) => pos.get(m));
        return [n, ps.length ? ps.reduce((x, y) => x + y, 0) / ps.length : pos.get(n)];
      }));
      layers[c].sort((a, b) => key.get(a) - key.get(b));
      layers[c].forEach((n, i) => pos.set(n, i));
    };
    for (let it = 0; it < 4; it++) {
      for (let c = 1; c < layers.length; c++) order(c, c - 1);
      for (let c = layers.length - 2; c >= 0; c--) order(c, c + 1);
    }
    let score = 0;
    const es = edges.map(([a, b]) => (col.get(a) <= col.get(b) ? [a, b] : [b, a]));
    es.forEach(([a, b], i) => {
      const span = col.get(b) - col.get(a);
      if (span !== 1) { score += span === 0 ? 3 : 2; return; }
      for (const [c, d] of es.slice(i + 1)) {
        if (col.get(c) === col.get(a) && col.get(d) === col.get(b)
            && (pos.get(a) - pos.get(c)) * (pos.get(b) - pos.get(d)) < 0) score += 1;
      }
    });
    return { layers, col, pos, score };
  }

  // ---------------------------------------------------------------- topology SVG
  let drawn = null;  // {sig, links: Map, hlinks: Map, switches: Map}

  function el(tag, at = {}, parent = null) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(at)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // where each host is plugged now: the topology's, or a cloud-router client's current AP
  function hostPlugs(topo, clients) {
    const plugs = {};
    for (const [h, x] of Object.entries(topo.hosts || {})) plugs[h] = { switch: x.switch, port: x.port, located: true, client: false };
    for (const c of clients || []) {
      if (!c.host || !(c.host in plugs)) continue;
      const loc = c.location || c.last_location;
      if (loc && loc.switch in (topo.switches || {})) plugs[c.host] = { switch: loc.switch, port: loc.port, located: !!c.location, client: true };
    }
    return plugs;
  }

  function drawTopology(topo, sws, plugs, tiers) {
    const names = Object.keys(topo.switches || {});
    const links = (topo.links || []).filter((l) => l.a in topo.switches && l.b in topo.switches);
    const sig = JSON.stringify([names, links.map((l) => l.name), plugs, tiers || null]);
    if (!drawn || drawn.sig !== sig) build(topo, names, links, plugs, tiers, sig);
    // live state, every poll
    const down = new Set(topo.down_ports || []);
    for (const l of links) {
      const g = drawn.links.get(l.name), state = l.up ? "up" : "down";
      if (g.getAttribute("data-state") !== state) {
        g.setAttribute("data-state", state);
        g.classList.toggle("down", !l.up);
        g.querySelector("title").textContent = `${l.name} (${l.kind}): ${state}`;
      }
    }
    for (const [h, p] of Object.entries(plugs)) {
      const line = drawn.hlinks.get(h), up = p.located && !down.has(`${p.switch}:${p.port}`);
      if (!line) continue;
      line.setAttribute("data-state", up ? "up" : "down");
      line.classList.toggle("down", !up);
    }
    const bySw = Object.fromEntries((sws || []).map((s) => [s.name, s]));
    for (const n of names) {
      const g = drawn.switches.get(n), s = bySw[n];
      const cls = !s ? "unknown" : !s.connected ? "disconnected" : s.synced ? "synced" : "syncing";
      g.setAttribute("class", `switch ${cls}`);
      g.setAttribute("data-connected", s && s.connected ? "yes" : "no");
      g.querySelector(".flows").textContent = s ? `${s.flows ?? 0} flows` : "";
      g.querySelector("title").textContent = `${n} dpid ${hex(topo.switches[n].dpid)}: `
        + (s ? `${s.connected ? "connected" : "not connected"}, ${s.synced ? "synced" : "not synced"}` : "no status");
    }
  }

  function build(topo, names, links, plugs, tiers, sig) {
    const svg = $("topology");
    svg.replaceChildren();
    drawn = { sig, links: new Map(), hlinks: new Map(), switches: new Map() };
    // adjacency and layering
    const adj = new Map(names.map((n) => [n, new Set()]));
    const edges = [];
    for (const l of links) if (l.a !== l.b) { adj.get(l.a).add(l.b); adj.get(l.b).add(l.a); edges.push([l.a, l.b]); }
    const hostsOf = new Map(names.map((n) => [n, []]));
    for (const [h, p] of Object.entries(plugs)) if (hostsOf.has(p.switch)) hostsOf.get(p.switch).push(h);
    let best;
    if (tiers && tiers.access_points) best = arrange(names, edges, tierLayers(names, tiers));
    else {
      const cands = [sweepLayers(names, adj), hostLayers(names, adj, new Set(Object.values(plugs).map((p) => p.switch)))];
      for (const layer of cands.filter(Boolean)) {
        const a = arrange(names, edges, layer);
        if (!best || a.score < best.score) best = a;
      }
    }
    if (!names.length) {
      svg.setAttribute("viewBox", "0 0 400 40");
      svg.style.maxWidth = "400px";
      el("text", { x: 10, y: 25, class: "empty" }, svg).textContent = "no switches declared";
      return;
    }
    const { layers, col } = best, last = layers.length - 1;
    const side = (n) => (col.get(n) === 0 ? -1 : col.get(n) === last ? 1 : 0);
    const maxSide = Math.max(1, ...names.filter((n) => side(n) !== 0).map((n) => hostsOf.get(n).length));
    const middleHosts = names.some((n) => side(n) === 0 && hostsOf.get(n).length);
    const rowGap = Math.max(76, 26 * maxSide + 24, middleHosts ? 110 : 0), colGap = 190;
    const rows = Math.max(...layers.map((l) => l.length));
    const at = new Map();
    layers.forEach((l, c) => l.forEach((n, i) => at.set(n, { x: c * colGap, y: ((rows - l.length) / 2 + i) * rowGap })));

    // host positions: left of the first column, right of the last, below the others
    const hostAt = new Map();
    for (const n of names) {
      const hs = hostsOf.get(n).sort(), k = hs.length, p = at.get(n), sd = side(n);
      hs.forEach((h, i) => hostAt.set(h, sd ? { x: p.x + sd * 110, y: p.y + (i - (k - 1) / 2) * 26, side: sd }
        : { x: p.x + (i - (k - 1) / 2) * 36, y: p.y + 54, side: 0 }));
    }

    const gh = el("g", { class: "hlinks" }, svg), gl = el("g", { class: "links" }, svg);
    const gs = el("g", { class: "switches" }, svg), gH = el("g", { class: "hosts" }, svg);
    // host links
    for (const [h, p] of Object.entries(plugs)) {
      const a = hostAt.get(h), b = at.get(p.switch);
      if (!a || !b) continue;
      const line = el("line", { class: "hlink", x1: a.x, y1: a.y, x2: b.x, y2: b.y, "data-host-link": `${h}-${p.switch}:${p.port}` }, gh);
      drawn.hlinks.set(h, line);
    }
    // switch links: parallel links fan out, links within one column bow out
    const par = new Map();
    for (const l of links) { const k = [l.a, l.b].sort().join("|"); par.set(k, (par.get(k) || 0) + 1); }
    const seen = new Map();
    for (const l of links) {
      const k = [l.a, l.b].sort().join("|"), i = seen.get(k) || 0, n = par.get(k);
      seen.set(k, i + 1);
      const a = at.get(l.a), b = at.get(l.b);
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      let off = (i - (n - 1) / 2) * 16;
      if (col.get(l.a) === col.get(l.b) && Math.abs(dy) > rowGap * 1.5) off += 45;
      const cx = (a.x + b.x) / 2 - (dy / len) * off, cy = (a.y + b.y) / 2 + (dx / len) * off;
      const g = el("g", { class: `link ${l.kind === "veth" ? "" : "tunnel"}`, "data-link": l.name, "data-state": "" }, gl);
      el("title", {}, g);
      el("path", { d: `M${a.x},${a.y} Q${cx},${cy} ${b.x},${b.y}` }, g);
      // port numbers near each end, just beside the line
      // (above the line; right of a steep one)
      const t = Math.min(0.4, 60 / len), ux = -dy / len, uy = dx / len;
      const sg = uy < -0.3 || (Math.abs(uy) <= 0.3 && ux > 0) ? 1 : -1, mag = Math.abs(uy) > 0.3 ? 8 : 13;
      const q = (s) => ({ x: (1 - s) ** 2 * a.x + 2 * (1 - s) * s * cx + s * s * b.x + sg * ux * mag,
                          y: (1 - s) ** 2 * a.y + 2 * (1 - s) * s * cy + s * s * b.y + sg * uy * mag });
      [[q(t), l.a_port], [q(1 - t), l.b_port]].forEach(([p, port]) => { el("text", { class: "port", x: p.x, y: p.y }, g).textContent = port; });
      drawn.links.set(l.name, g);
    }
    // switches
    for (const n of names) {
      const p = at.get(n), w = Math.max(64, 8 * n.length + 26);
      const g = el("g", { class: "switch", "data-switch": n, transform: `translate(${p.x},${p.y})` }, gs);
      el("title", {}, g);
      el("rect", { x: -w / 2, y: -17, width: w, height: 34 }, g);
      el("text", { y: -5 }, g).textContent = n;
      el("text", { class: "flows", y: 9 }, g);
      drawn.switches.set(n, g);
    }
    // hosts
    for (const [h, p] of Object.entries(plugs)) {
      const q = hostAt.get(h);
      if (!q) continue;
      const x = topo.hosts[h] || {};
      const g = el("g", { class: `host${p.client ? " client" : ""}`, "data-host": h, "data-switch-at": p.switch,
        transform: `translate(${q.x},${q.y})` }, gH);
      el("title", {}, g).textContent = `${h} ${x.mac || ""} ${x.ipv4 || ""} on ${p.switch}:${p.port}`;
      el("circle", { r: 9 }, g);
      const lbl = q.side < 0 ? { x: -14, "text-anchor": "end" } : q.side > 0 ? { x: 14, "text-anchor": "start" }
        : { y: 19, "text-anchor": "middle" };
      el("text", lbl, g).textContent = h;
    }
    // fit the drawing: never scaled up much beyond its natural size
    const xs = [], ys = [];
    for (const p of at.values()) { xs.push(p.x - 60, p.x + 60); ys.push(p.y - 24, p.y + 24); }
    for (const [h, p] of hostAt) {
      const wText = 8 * h.length + 20;
      xs.push(p.side < 0 ? p.x - wText : p.x - 24, p.side > 0 ? p.x + wText : p.x + 24);
      ys.push(p.y - 14, p.y + (p.side ? 14 : 30));
    }
    const x0 = Math.min(...xs) - 10, y0 = Math.min(...ys) - 10, w = Math.max(...xs) - x0 + 10, h = Math.max(...ys) - y0 + 10;
    svg.setAttribute("viewBox", `${x0} ${y0} ${w} ${h}`);
    svg.style.maxWidth = `${Math.round(w * 1.3)}px`;
  }

  // ---------------------------------------------------------------- tables
  function renderSwitches(sws) {
    $("switches").innerHTML = table(["switch", "dpid", "connected", "synced", "flows", "groups", "meters", "channel",
      "data plane", "last error"], (sws || []).map((s) => ({
      attrs: { "data-switch-row": s.name },
      cells: [`<b>${esc(s.name)}</b>`, `<span class="mono">${hex(s.dpid)}</span>`, yes(s.connected), yes(s.synced),
        esc(s.flows), esc(s.groups), esc(s.meters), esc((s.channel || {}).state), esc(s.data_plane),
        s.last_error ? `<span class="bad">${esc(typeof s.last_error === "string" ? s.last_error : JSON.stringify(s.last_error))}</span>` : ""],
    })), "no switch");
  }

  function renderApps(apps) {
    $("apps").innerHTML = table(["app", "id", "intent revision", "view"], Object.entries(apps || {}).map(([n, a]) => [
      `<b>${esc(n)}</b>`, esc(hex(a.app_id)), esc(a.revision ?? "–"), FUNCS[n] ? `<a href="#panel-${esc(n)}">below</a>` : ""]));
  }

  function setHTML(node, html) { if (node.dataset.html !== html) { node.innerHTML = html; node.dataset.html = html; } }

  function renderPanels(views) {
    const box = $("panels");
    for (const p of [...box.children]) if (!(p.dataset.app in views)) p.remove();
    for (const name of Object.keys(FUNCS)) {
      if (!(name in views)) continue;
      let card = $(`panel-${name}`);
      if (!card) {
        card = document.createElement("section");
        card.className = "card";
        card.id = `panel-${name}`;
        card.dataset.app = name;
        card.innerHTML = `<h2>${esc(FUNCS[name].title)} <span class="note">(${esc(name)})</span></h2><div class="body"></div>`;
        box.appendChild(card);
      }
      let html;
      try { html = FUNCS[name].render(views[name]); } catch (e) { html = `<p class="bad">cannot show this view: ${esc(e.message)}</p>`; }
      setHTML(card.querySelector(".body"), html);
    }
  }

  // ---------------------------------------------------------------- the poll loop
  let lastOk = null;
  async function poll() {
    const t0 = performance.now();
    failures.length = 0;
    try {
      const [topo, sws, apps] = await Promise.all([get("/v1/topology"), get("/v1/switches"), get("/v1/apps")]);
      const loaded = apps.data ? Object.keys(apps.data).filter((n) => FUNCS[n]) : [];
      const views = {};
      await Promise.all(loaded.map(async (n) => { views[n] = await FUNCS[n].load(); }));
      if (topo.data) {
        $("topo-name").textContent = topo.data.name || "";
        const cr = views.cloud_router;
        drawTopology(topo.data, sws.data, hostPlugs(topo.data, cr && cr.clients), cr && cr.sum && cr.sum.tiers);
      }
      if (sws.data) renderSwitches(sws.data);
      if (apps.data) renderApps(apps.data);
      renderPanels(views);
      const st = $("status");
      if (topo.data) lastOk = new Date();
      st.className = failures.length ? "status stale" : "status";
      st.textContent = failures.length
        ? `${failures.length} request(s) failed (${failures.slice(0, 3).join("; ")})`
          + (lastOk ? `; last complete view ${lastOk.toLocaleTimeString()}` : "")
        : `updated ${lastOk.toLocaleTimeString()} (${Math.round(performance.now() - t0)} ms)`;
    } catch (e) {  // a bug in this page: shown, not thrown
      $("status").className = "status stale";
      $("status").textContent = `page error: ${e.message}`;
    }
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - t0)));
  }

  poll();
})();
