// sidecar web UI. Reads this agent's HTTP API only, through blocking
// queries (?index=N&wait=30s, X-Sidecar-Index): one held request each for
// members, services, elections and locks, so a change shows within a
// round trip and an idle page costs the agent four parked requests. The
// instances of every service are re-read when the services table changes;
// /v1/status (not a blocking query) after any change and every 5 s.
// Failed requests are retried with capped, jittered backoff; the page says
// when the agent is unreachable and how old its data is.
//
// The ACL token is kept in localStorage and sent as X-Sidecar-Token. A URL
// fragment #token=SECRET (e.g. /ui/#token=SECRET) stores it and is then
// removed from the address bar.
'use strict';
(() => {
  const TOKEN_KEY = 'sidecar.token';
  const WAIT = '30s';
  const STATUS_EVERY = 5000;
  const $ = (sel, root = document) => root.querySelector(sel);

  const S = {
    status: null, members: null, services: null, instances: {},
    elections: null, locks: null,
    idx: {},           // latest X-Sidecar-Index per list
    gen: {},           // token generation of each list's last answer
    got: {},           // performance.now() of each list's last answer
    forbidden: {},     // list -> error text of a 403
    failing: {},       // list -> error text of a failed request
    lastOK: 0, downSince: 0, retryAt: 0,
    filter: { name: '', tag: '' },
  };

  // ---- token -------------------------------------------------------------
  let tokenGen = 0;
  let aborter = new AbortController();
  const tokenWaiters = new Set();

  function token() { try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; } }
  function setToken(t) {
    try { t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
    tokenGen++;
    S.forbidden = {};
    S.instances = {};
    aborter.abort();
    aborter = new AbortController();
    for (const w of tokenWaiters) w();
    tokenWaiters.clear();
    $('#token').value = '';
    render();
  }
  function takeTokenFromHash() {
    const m = location.hash.match(/(?:^#|[&?/])token=([^&]*)/);
    if (!m) return;
    let t = m[1];
    try { t = decodeURIComponent(t); } catch { /* keep it raw */ }
    try { localStorage.setItem(TOKEN_KEY, t); } catch { /* private mode */ }
    let rest = location.hash.slice(1).replace(/(^|[&?])token=[^&]*/, '').replace(/[&?]$/, '');
    if (!rest.startsWith('/')) rest = '/overview';
    history.replaceState(null, '', location.pathname + location.search + '#' + rest);
  }

  // ---- fetching ----------------------------------------------------------
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function tokenChangeOr(ms) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); tokenWaiters.delete(done); resolve(); };
      const timer = setTimeout(done, ms);
      tokenWaiters.add(done);
    });
  }
  function backoff(n) { // 250 ms doubling to 5 s, ±20 % jitter
    const base = Math.min(5000, 250 * 2 ** Math.min(n, 5));
    return base * (0.8 + Math.random() * 0.4);
  }

  async function get(path, timeoutMs) {
    const headers = {};
    const t = token();
    if (t) headers['X-Sidecar-Token'] = t;
    const signals = [aborter.signal];
    if (AbortSignal.timeout) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = AbortSignal.any ? AbortSignal.any(signals) : aborter.signal;
    const resp = await fetch(path, { headers, signal, cache: 'no-store', credentials: 'omit' });
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON */ }
    const index = Number(resp.headers.get('X-Sidecar-Index') || 0);
    const error = body && typeof body.error === 'string' ? body.error : resp.statusText;
    return { ok: resp.ok, status: resp.status, index, body, error };
  }

  function reached() {
    S.lastOK = Date.now();
    S.downSince = 0;
  }
  function unreachable(key, err, retryIn) {
    S.failing[key] = err;
    if (!S.downSince) S.downSince = Date.now();
    S.retryAt = Date.now() + retryIn;
    render();
  }

  // watch runs one blocking query forever: it answers at once without an
  // index, then each time the list changes past the index it holds.
  function watch(key, path, apply) {
    (async () => {
      let index = 0, fails = 0, gen = tokenGen;
      for (;;) {
        if (gen !== tokenGen) { index = 0; gen = tokenGen; }
        const url = index ? `${path}?index=${index}&wait=${WAIT}` : path;
        let r;
        try {
          r = await get(url, 40000);
        } catch (e) {
          if (gen !== tokenGen) continue; // aborted by a new token
          const wait = backoff(fails++);
          unreachable(key, 'the agent is unreachable', wait);
          await sleep(wait);
          continue;
        }
        reached();
        if (r.status === 403) {
          S.forbidden[key] = r.error;
          delete S.failing[key];
          index = 0;
          render();
          await tokenChangeOr(30000);
          continue;
        }
        if (!r.ok) {
          const wait = backoff(fails++);
          unreachable(key, `${r.status} ${r.error}`, wait);
          await sleep(wait);
          continue;
        }
        fails = 0;
        delete S.forbidden[key];
        delete S.failing[key];
        // An index that went back (a restarted agent's fresh copy) starts
        // over, as Consul's clients do.
        const moved = !S.got[key] || r.index !== S.idx[key] || gen !== S.gen[key];
        index = r.index < index ? 0 : r.index;
        S.idx[key] = r.index;
        S.gen[key] = gen;
        S.got[key] = performance.now();
        apply(r.body);
        // A wait that ended without a change re-reads nothing else.
        if (moved) changed(key); else render();
        if (!r.index) await sleep(1000); // not a blocking answer
      }
    })();
  }

  // once reads a list without blocking (status, instances, lease resync).
  async function once(key, path) {
    const gen = tokenGen;
    try {
      const r = await get(path, 10000);
      reached();
      if (r.status === 403) { S.forbidden[key] = r.error; return null; }
      if (!r.ok) { S.failing[key] = `${r.status} ${r.error}`; return null; }
      delete S.forbidden[key];
      delete S.failing[key];
      return r;
    } catch (e) {
      if (gen !== tokenGen) return null; // aborted by a new token
      if (!S.downSince) S.downSince = Date.now();
      S.failing[key] = 'the agent is unreachable';
      return null;
    }
  }

  let statusTimer = 0, statusBusy = false, statusAgain = false;
  async function refreshStatus() {
    if (statusBusy) { statusAgain = true; return; }
    statusBusy = true;
    clearTimeout(statusTimer);
    const r = await once('status', '/v1/status');
    if (r) S.status = r.body;
    statusBusy = false;
    render();
    if (statusAgain) { statusAgain = false; refreshStatus(); return; }
    statusTimer = setTimeout(refreshStatus, STATUS_EVERY);
  }

  // Every service's instances, re-read when the services table changes;
  // two at a time, so the browser keeps connections for the held queries.
  let instBusy = false, instAgain = false;
  async function refreshInstances() {
    if (instBusy) { instAgain = true; return; }
    instBusy = true;
    const names = Object.keys(S.services || {});
    const next = {};
    let i = 0;
    const worker = async () => {
      while (i < names.length) {
        const name = names[i++];
        const r = await once('service:' + name, '/v1/services/' + encodeURIComponent(name));
        next[name] = r ? r.body || [] : S.instances[name] || null;
      }
    };
    await Promise.all([worker(), worker()]);
    S.instances = next;
    S.instancesLoaded = true;
    instBusy = false;
    render();
    if (instAgain) { instAgain = false; refreshInstances(); }
  }

  // A holder's remaining lease is known to the agent that answers only on
  // the Raft leader or the agent holding it; keepalives do not change the
  // list, so the page re-reads it (without blocking) now and then to
  // resync its countdowns.
  const resyncTimers = {};
  function scheduleResync(key) {
    clearTimeout(resyncTimers[key]);
    const known = (S[key] || []).filter((m) => m.holder && m.expires_in).map((m) => parseDur(m.expires_in));
    if (!known.length) return;
    const delay = Math.max(1000, Math.min(5000, Math.min(...known) / 2));
    resyncTimers[key] = setTimeout(async () => {
      const r = await once(key, '/v1/' + key);
      if (r && r.index >= (S.idx[key] || 0)) {
        S[key] = r.body;
        S.got[key] = performance.now();
        S.idx[key] = r.index;
        render();
      }
      scheduleResync(key);
    }, delay);
  }

  function changed(key) {
    if (key === 'services') refreshInstances();
    if (key === 'elections' || key === 'locks') scheduleResync(key);
    refreshStatus();
    render();
  }

  // ---- helpers -----------------------------------------------------------
  function esc(v) {
    return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }
  function parseDur(s) { // Go duration -> ms
    let ms = 0;
    const units = { h: 3600e3, m: 60e3, s: 1e3, ms: 1, us: 1e-3, 'µs': 1e-3, ns: 1e-6 };
    for (const [, n, u] of String(s).matchAll(/([\d.]+)(h|ms|m|s|us|µs|ns)/g)) ms += Number(n) * units[u];
    return ms;
  }
  function fmtDur(ms) {
    if (ms < 0) ms = 0;
    const s = Math.floor(ms / 1000);
    if (s < 60) return (ms < 10000 ? (ms / 1000).toFixed(1) : s) + 's';
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }
  function ago(iso) {
    const t = Date.parse(iso);
    if (!t || t < 0) return '—';
    return `<time datetime="${esc(iso)}" title="${esc(new Date(t).toLocaleString())}" data-ago="${t}">${fmtDur(Date.now() - t)} ago</time>`;
  }
  const chip = (status, text) => `<span class="chip status-${esc(status)}">${esc(text ?? status)}</span>`;
  const tags = (list) => (list || []).map((t) => `<span class="tag">${esc(t)}</span>`).join('');
  const rank = { critical: 0, failed: 0, warning: 1, suspect: 1, passing: 2, alive: 2, left: 3 };
  const allInstances = () => Object.values(S.instances).filter(Boolean).flat();
  function countBy(list, key) {
    const out = {};
    for (const x of list) out[x[key]] = (out[x[key]] || 0) + 1;
    return out;
  }
  function counts(by, order) {
    return `<span class="counts">${order.filter((k) => by[k]).map((k) => chip(k, `${by[k]} ${k}`)).join('') || '<span class="muted">none</span>'}</span>`;
  }
  function forbiddenNote(key, what) {
    return S.forbidden[key] ? `<p class="note bad" data-forbidden="${esc(key)}">403: this token may not read ${esc(what)}</p>` : '';
  }
  function table(cls, head, rows, empty) {
    if (!rows.length) return `<p class="muted">${empty}</p>`;
    return `<div class="tablewrap"><table class="stack ${cls}"><thead><tr>${head.map((h) => `<th scope="col"${h.endsWith('#') ? ' class="num"' : ''}>${esc(h.replace(/#$/, ''))}</th>`).join('')}</tr></thead><tbody>${rows.join('')}</tbody></table></div>`;
  }
  const nodeLink = (n) => `<a href="#/nodes/${encodeURIComponent(n)}">${esc(n)}</a>`;
  const svcLink = (n) => `<a href="#/services/${encodeURIComponent(n)}">${esc(n)}</a>`;

  // ---- views -------------------------------------------------------------
  function problems() {
    const out = [];
    const st = S.status;
    if (st && !st.leader) out.push(['critical', 'No Raft leader known', 'the cluster cannot accept writes']);
    for (const m of S.members || []) {
      if (m.status === 'failed' || m.status === 'suspect') {
        out.push([m.status, `Node ${nodeLink(m.name)} ${esc(m.status)}`, `${esc(m.role)} at ${esc(m.addr)}:${esc(m.port)}`]);
      }
    }
    for (const i of allInstances().sort((a, b) => rank[a.status] - rank[b.status])) {
      if (i.status === 'passing') continue;
      const bad = (i.checks || []).filter((c) => c.status !== 'passing');
      const node = (S.members || []).find((m) => m.name === i.node);
      let why = bad.map((c) => `${esc(c.name || c.id)}: ${esc(c.output || c.status)}`).join('; ');
      if (!why && node && node.status !== 'alive') why = `its node is ${esc(node.status)}`;
      out.push([i.status, `${svcLink(i.name)} instance <span class="mono">${esc(i.id)}</span> on ${nodeLink(i.node)} ${esc(i.status)}`, why]);
    }
    for (const e of S.elections || []) {
      if (!e.holder) out.push(['warning', `Election <a href="#/elections">${esc(e.name)}</a> has no leader`, `${e.waiters.length} waiting; last token ${e.last_token}`]);
    }
    for (const [k, err] of Object.entries(S.forbidden)) {
      if (!k.startsWith('service:')) out.push(['warning', `403 on ${esc(k)}`, esc(err)]);
    }
    return out.sort((a, b) => rank[a[0]] - rank[b[0]]);
  }

  function viewOverview() {
    const st = S.status || {};
    const members = S.members || [];
    const servers = members.filter((m) => m.role === 'server').sort((a, b) => a.name.localeCompare(b.name));
    const inst = allInstances();
    const probs = problems();
    // Problems show once every list has answered (or was refused), so the
    // card does not grow in steps while the page loads.
    const loaded = (k, v) => v || S.forbidden[k];
    const ready = loaded('members', S.members) && loaded('elections', S.elections) &&
      (S.forbidden.services || (S.services && (S.instancesLoaded || !Object.keys(S.services).length)));
    const probList = !ready ? '<p class="muted">Loading…</p>' : probs.length
      ? `<ul class="plain problems">${probs.map(([s, what, why]) => `<li class="problem">${chip(s)} <span>${what}</span> <span class="muted">${why}</span></li>`).join('')}</ul>`
      : `<p>${chip('passing', 'no problems')} <span class="muted">every member alive, every instance passing, every election led</span></p>`;
    return `<h1>Overview</h1>
<section class="card" aria-labelledby="h-problems" id="problems"><h2 id="h-problems">Problems${probs.length ? ` (${probs.length})` : ''}</h2>${probList}</section>
<div class="grid">
<section class="card" aria-labelledby="h-raft"><h2 id="h-raft">Raft</h2>
<dl class="kv"><dt>Leader</dt><dd id="raft-leader">${st.leader ? nodeLink(st.leader) : (S.status ? chip('critical', 'none') : '—')}</dd>
<dt>Term</dt><dd id="raft-term">${esc(st.term ?? '—')}</dd><dt>Commit index</dt><dd>${esc(st.commit_index ?? '—')}</dd>
<dt>Peers</dt><dd>${(st.peers || []).map(esc).join(', ') || '—'}</dd></dl></section>
<section class="card" aria-labelledby="h-agent"><h2 id="h-agent">This agent</h2>
<dl class="kv"><dt>Node</dt><dd>${st.node ? nodeLink(st.node) : '—'}</dd><dt>Role</dt><dd>${esc(st.role ?? '—')}</dd>
<dt>Registry index</dt><dd id="registry-index">${esc(st.registry_index ?? '—')}</dd><dt>Applied index</dt><dd>${esc(st.applied_index ?? '—')}</dd></dl></section>
<section class="card" aria-labelledby="h-members"><h2 id="h-members">Members</h2>
<p class="big">${S.members ? members.length : '—'}</p>${counts(countBy(members, 'status'), ['failed', 'suspect', 'alive', 'left'])}${forbiddenNote('members', 'members (node:read)')}</section>
<section class="card" aria-labelledby="h-instances"><h2 id="h-instances">Service instances</h2>
<p class="big">${S.services ? inst.length : '—'} <span class="muted">in ${S.services ? Object.keys(S.services).length : '—'} services</span></p>${counts(countBy(inst, 'status'), ['critical', 'warning', 'passing'])}${forbiddenNote('services', 'services')}</section>
<section class="card" aria-labelledby="h-mutex"><h2 id="h-mutex"><a href="#/elections">Elections &amp; locks</a></h2>
<p class="big">${S.elections ? S.elections.length : '—'} <span class="muted">elections, ${S.locks ? S.locks.length : '—'} locks</span></p>
<span class="counts">${S.elections ? chip('passing', `${S.elections.filter((e) => e.holder).length} led`) : ''}${(S.elections || []).some((e) => !e.holder) ? chip('warning', `${S.elections.filter((e) => !e.holder).length} vacant`) : ''}${S.locks ? chip('left', `${S.locks.filter((l) => l.holder).length} locks held`) : ''}</span>${forbiddenNote('elections', 'elections')}</section>
<section class="card wide" aria-labelledby="h-servers"><h2 id="h-servers">Servers</h2>
${table('servers', ['Name', 'Address', 'Status', 'Raft'], servers.map((m) => `<tr data-member="${esc(m.name)}" class="status-${esc(m.status)}"><td data-label="Name">${nodeLink(m.name)}</td><td data-label="Address" class="mono">${esc(m.addr)}:${esc(m.port)}</td><td data-label="Status">${chip(m.status)}</td><td data-label="Raft">${m.name === st.leader ? '<strong>leader</strong>' : ((st.peers || []).includes(m.name) ? 'follower' : '<span class="muted">not a peer</span>')}</td></tr>`), S.members ? 'No servers known.' : (S.forbidden.members ? 'Not readable with this token.' : 'Loading…'))}</section>
</div>`;
  }

  function instanceRows(list, withService) {
    return list.map((i) => {
      const checks = (i.checks || []).map((c) => `<li class="check status-${esc(c.status)}" data-check="${esc(c.id)}">${chip(c.status)} <span>${esc(c.name || c.id)}</span> <span class="muted">${esc(c.type)}</span>${c.output ? `<pre class="output">${esc(c.output)}</pre>` : ''}</li>`).join('');
      const meta = Object.entries(i.meta || {}).map(([k, v]) => `<span class="tag">${esc(k)}=${esc(v)}</span>`).join('');
      return `<tr data-instance="${esc(i.id)}" data-node="${esc(i.node)}" class="status-${esc(i.status)}">
<td data-label="Instance" class="mono">${esc(i.id)}</td>${withService ? `<td data-label="Service">${svcLink(i.name)}</td>` : ''}<td data-label="Node">${nodeLink(i.node)}</td>
<td data-label="Address" class="mono">${esc(i.address)}:${esc(i.port)}</td><td data-label="Tags">${tags(i.tags)}</td><td data-label="Meta">${meta}</td>
<td data-label="Status">${chip(i.status)}</td><td data-label="Checks"><ul class="plain">${checks || '<li class="muted">no checks</li>'}</ul></td></tr>`;
    });
  }

  function viewServices() {
    const f = S.filter;
    const names = Object.keys(S.services || {}).sort();
    const rows = names.filter((n) => n.includes(f.name.trim()) && (!f.tag.trim() || (S.services[n] || []).some((t) => t.includes(f.tag.trim())))).map((n) => {
      const inst = S.instances[n] || [];
      const by = countBy(inst, 'status');
      const worst = by.critical ? 'critical' : by.warning ? 'warning' : 'passing';
      return `<tr data-service="${esc(n)}" class="status-${worst}"><td data-label="Service">${svcLink(n)}</td><td data-label="Tags">${tags(S.services[n])}</td><td data-label="Instances" class="num">${S.instances[n] ? inst.length : '—'}</td><td data-label="Status">${counts(by, ['critical', 'warning', 'passing'])}</td></tr>`;
    });
    return `<h1>Services</h1>${forbiddenNote('services', 'the services')}
<div class="filters" role="search"><label>Name <input id="f-name" type="search" value="${esc(f.name)}" placeholder="filter by name"></label>
<label>Tag <input id="f-tag" type="search" value="${esc(f.tag)}" placeholder="filter by tag"></label></div>
<section class="card">${table('services', ['Service', 'Tags', 'Instances#', 'Status'], rows, S.services ? 'No services match.' : 'Loading…')}</section>`;
  }

  function viewService(name) {
    const inst = (S.instances[name] || []).slice().sort((a, b) => rank[a.status] - rank[b.status] || a.id.localeCompare(b.id));
    const known = S.services && name in S.services;
    return `<h1>Service <span class="mono">${esc(name)}</span></h1>${forbiddenNote('service:' + name, 'this service')}
<p><a href="#/services">← all services</a> ${known ? counts(countBy(inst, 'status'), ['critical', 'warning', 'passing']) : ''}</p>
<section class="card">${table('instances', ['Instance', 'Node', 'Address', 'Tags', 'Meta', 'Status', 'Checks'], instanceRows(inst, false), S.services ? (known ? 'No instances.' : 'No such service.') : 'Loading…')}</section>`;
  }

  function viewNodes() {
    const inst = allInstances();
    const per = countBy(inst, 'node');
    const ms = (S.members || []).slice().sort((a, b) => rank[a.status] - rank[b.status] || (a.role === b.role ? 0 : a.role === 'server' ? -1 : 1) || a.name.localeCompare(b.name));
    const rows = ms.map((m) => `<tr data-member="${esc(m.name)}" class="status-${esc(m.status)}"><td data-label="Node">${nodeLink(m.name)}</td><td data-label="Role">${esc(m.role)}${m.name === (S.status || {}).leader ? ' <strong>(Raft leader)</strong>' : ''}</td><td data-label="Address" class="mono">${esc(m.addr)}:${esc(m.port)}</td><td data-label="Status">${chip(m.status)}</td><td data-label="Instances" class="num">${per[m.name] || 0}</td></tr>`);
    return `<h1>Nodes</h1>${forbiddenNote('members', 'members (node:read)')}
<section class="card">${table('members', ['Node', 'Role', 'Address', 'Status', 'Instances#'], rows, S.members ? 'No members.' : 'Loading…')}</section>`;
  }

  function viewNode(name) {
    const m = (S.members || []).find((x) => x.name === name);
    const inst = allInstances().filter((i) => i.node === name).sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    return `<h1>Node <span class="mono">${esc(name)}</span></h1><p><a href="#/nodes">← all nodes</a></p>
<section class="card" data-member="${esc(name)}"><dl class="kv"><dt>Status</dt><dd>${m ? chip(m.status) : (S.members ? 'not a member' : '—')}</dd><dt>Role</dt><dd>${esc(m ? m.role : '—')}</dd>
<dt>Address</dt><dd class="mono">${m ? `${esc(m.addr)}:${esc(m.port)}` : '—'}</dd></dl></section>
<section class="card"><h2>Instances</h2>${table('instances', ['Instance', 'Service', 'Node', 'Address', 'Tags', 'Meta', 'Status', 'Checks'], instanceRows(inst, true), S.services ? 'No instances on this node.' : 'Loading…')}</section>`;
  }

  function lease(key, m) {
    if (!m.holder) return '—';
    if (m.expires_in) {
      const left = parseDur(m.expires_in);
      return `<span class="countdown" data-left="${left}" data-key="${key}">${fmtDur(left)}</span> <span class="muted">of ${esc(m.lease_ttl || '?')}</span>`;
    }
    return `<span class="muted" title="The lease deadline lives on the Raft leader (and the agent that holds it); this agent knows only the TTL, restarted by every keepalive">TTL ${esc(m.lease_ttl || '?')}</span>`;
  }
  function mutexRows(key, list, isElection) {
    return (list || []).map((m) => {
      const h = m.holder;
      const who = h ? (isElection ? `<span class="mono">${esc(h.candidate)}</span> on ${nodeLink(h.node)}` : nodeLink(h.node)) : chip('warning', 'vacant');
      const waiters = m.waiters.length ? `<ol class="waiters">${m.waiters.map((w) => `<li><span class="mono">${esc(isElection ? w.candidate : w.lease)}</span> on ${nodeLink(w.node)}${w.value ? ` <span class="muted mono">${esc(w.value)}</span>` : ''}</li>`).join('')}</ol>` : '<span class="muted">none</span>';
      return `<tr data-${isElection ? 'election' : 'lock'}="${esc(m.name)}" class="${h ? '' : 'vacant'}"><td data-label="Name" class="mono">${esc(m.name)}</td>
<td data-label="${isElection ? 'Leader' : 'Holder'}" class="holder">${who}</td><td data-label="Value" class="mono value">${h ? esc(h.value) : ''}</td>
<td data-label="Token" class="num token">${h ? esc(h.token) : `<span class="muted" title="last token">${esc(m.last_token)}</span>`}</td>
<td data-label="Since">${h ? ago(h.since) : '—'}</td><td data-label="Lease">${lease(key, m)}</td><td data-label="Waiting">${waiters}</td></tr>`;
    });
  }
  function viewElections() {
    const head = (who) => ['Name', who, 'Value', 'Token#', 'Since', 'Lease left', 'Waiting'];
    return `<h1>Elections &amp; locks</h1>
<section class="card" aria-labelledby="h-el"><h2 id="h-el">Elections</h2>${forbiddenNote('elections', 'elections')}${table('elections', head('Leader'), mutexRows('elections', S.elections, true), S.elections ? 'No elections.' : 'Loading…')}</section>
<section class="card" aria-labelledby="h-lk"><h2 id="h-lk">Locks</h2>${forbiddenNote('locks', 'locks')}${table('locks', head('Holder'), mutexRows('locks', S.locks, false), S.locks ? 'No locks.' : 'Loading…')}</section>`;
  }

  // ---- rendering ---------------------------------------------------------
  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
    return { view: parts[0] || 'overview', arg: parts[1] || '' };
  }

  let renderQueued = false;
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(draw, 0);
  }
  function draw() {
    renderQueued = false;
    const { view, arg } = route();
    let html;
    switch (view) {
      case 'services': html = arg ? viewService(arg) : viewServices(); break;
      case 'nodes': html = arg ? viewNode(arg) : viewNodes(); break;
      case 'elections': html = viewElections(); break;
      default: html = viewOverview();
    }
    const main = $('#main');
    const focused = document.activeElement && main.contains(document.activeElement) ? document.activeElement.id : '';
    const sel = focused && document.activeElement.selectionStart;
    if (main.dataset.html !== html) {
      main.innerHTML = html;
      main.dataset.html = html;
      main.dataset.view = view;
      if (focused && $('#' + focused)) {
        const el = $('#' + focused);
        el.focus();
        try { el.setSelectionRange(sel, sel); } catch { /* not a text field */ }
      }
    }
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.view === view) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    drawChrome();
    tick();
  }

  // drawChrome shows the agent, the connection and what is refused.
  function drawChrome() {
    const st = S.status;
    $('#agent').textContent = st ? `${st.node} · ${st.role}` : '';
    const conn = $('#conn');
    const banner = $('#banner');
    const forb = Object.keys(S.forbidden).filter((k) => !k.startsWith('service:'));
    const haveToken = !!token();
    let text, cls, msg = '', info = false;
    if (S.downSince) {
      cls = 'down';
      text = 'unreachable';
      const since = S.lastOK ? `the data below is from ${new Date(S.lastOK).toLocaleTimeString()} (${fmtDur(Date.now() - S.lastOK)} ago) and may be stale` : 'no data yet';
      msg = `The agent is unreachable since ${new Date(S.downSince).toLocaleTimeString()}: ${since}. Retrying ${S.retryAt > Date.now() ? `in ${fmtDur(S.retryAt - Date.now())}` : 'now'}.`;
    } else if (forb.length) {
      cls = 'stale';
      text = '403';
      info = true;
      msg = haveToken
        ? `This token may not read ${forb.join(', ')} (403: ${S.forbidden[forb[0]]}). Enter another token above.`
        : `This agent needs an ACL token (403: ${S.forbidden[forb[0]]}). Enter a token above.`;
    } else if (S.lastOK) {
      cls = 'live';
      text = 'live';
    } else {
      cls = '';
      text = 'connecting';
    }
    conn.className = 'conn ' + cls;
    conn.textContent = text;
    banner.className = 'banner' + (info ? ' info' : '');
    if (banner.textContent !== msg) banner.textContent = msg;
    banner.id = 'banner';
    document.body.classList.toggle('down', !!S.downSince);
    const form = $('#tokenform');
    const needed = forb.length > 0;
    form.classList.toggle('needed', needed);
    document.body.dataset.tokenNeeded = needed ? 'yes' : 'no';
    $('#token').placeholder = haveToken ? 'token stored (enter to replace)' : 'ACL token (X-Sidecar-Token)';
    $('#forget').disabled = !haveToken;
  }

  // tick advances countdowns and ages between answers, touching only
  // their text.
  function tick() {
    const now = performance.now();
    for (const el of document.querySelectorAll('.countdown')) {
      const left = Number(el.dataset.left) - (now - (S.got[el.dataset.key] || now));
      el.textContent = fmtDur(left);
      el.classList.toggle('low', left < 2000);
    }
    for (const el of document.querySelectorAll('time[data-ago]')) {
      el.textContent = fmtDur(Date.now() - Number(el.dataset.ago)) + ' ago';
    }
    if (S.downSince) drawChrome();
    $('#freshness').textContent = S.lastOK ? `Last answer ${new Date(S.lastOK).toLocaleTimeString()}.` : '';
  }

  // ---- start -------------------------------------------------------------
  function start() {
    takeTokenFromHash();
    $('#tokenform').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('#token').value.trim();
      if (t) setToken(t);
    });
    $('#forget').addEventListener('click', () => setToken(''));
    $('#main').addEventListener('input', (e) => {
      if (e.target.id === 'f-name') S.filter.name = e.target.value;
      else if (e.target.id === 'f-tag') S.filter.tag = e.target.value;
      else return;
      render();
    });
    window.addEventListener('hashchange', () => {
      if (/token=/.test(location.hash)) { takeTokenFromHash(); setToken(token()); return; }
      render();
      $('#main').focus({ preventScroll: true });
    });
    setInterval(tick, 250);
    watch('members', '/v1/members', (b) => { S.members = b || []; });
    watch('services', '/v1/services', (b) => { S.services = b || {}; });
    watch('elections', '/v1/elections', (b) => { S.elections = b || []; });
    watch('locks', '/v1/locks', (b) => { S.locks = b || []; });
    refreshStatus();
    render();
  }
  start();
})();
