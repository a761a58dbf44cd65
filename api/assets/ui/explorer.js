// LogPipeline's log explorer: searches GET /api/logs, draws GET /api/logs/histogram, and
// follows GET /api/logs/tail. No build step and no dependency. Everything a log holds
// comes from devices, which are not trusted: it is only ever set as text.

const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
const PRESETS = { '15m': 15 * 60e3, '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };
const INTERVALS = { '1m': 60e3, '5m': 300e3, '15m': 900e3, '1h': 3600e3, '1d': 86400e3 };
const PAGE = 200;
const MOST_ROWS = 10000;
const KEY = 'logpipeline-api-key';

const $ = (id) => document.getElementById(id);
const form = $('search');
const results = $('results');
const chart = $('chart');

/** What is shown: the page's state, kept in its URL so that a link shares it. */
let state = readState(new URLSearchParams(location.search));
/** The search running, so that a newer one can abandon it. */
let generation = 0;
let next = null;
let loading = false;
let live = null;
let histogram = null;

// ---- State and the URL -------------------------------------------------------------

function readState(params) {
  const levels = params.getAll('level').flatMap((value) => value.split(','))
    .filter((level) => LEVELS.includes(level));
  const range = params.get('range') || (params.get('since') ? 'custom' : '1h');
  return {
    q: params.get('q') || '',
    levels,
    device: params.get('device') || '',
    service: params.get('service') || '',
    trace: params.get('trace') || '',
    range: range in PRESETS || range === 'custom' ? range : '1h',
    since: params.get('since') || '',
    until: params.get('until') || '',
    live: params.get('live') === '1',
  };
}

function writeUrl() {
  const params = new URLSearchParams();
  if (state.q) params.set('q', state.q);
  if (state.levels.length) params.set('level', state.levels.join(','));
  if (state.device) params.set('device', state.device);
  if (state.service) params.set('service', state.service);
  if (state.trace) params.set('trace', state.trace);
  params.set('range', state.range);
  if (state.range === 'custom') {
    params.set('since', state.since);
    params.set('until', state.until);
  }
  if (state.live) params.set('live', '1');
  history.replaceState(null, '', `${location.pathname}?${params}`);
}

function showState() {
  $('q').value = state.q;
  for (const box of form.querySelectorAll('input[name=level]')) {
    box.checked = state.levels.includes(box.value);
  }
  $('device').value = state.device;
  $('service').value = state.service;
  $('trace').value = state.trace;
  $('range').value = state.range;
  // To the second, as the inputs take it; the state keeps the bounds as they are.
  $('since').value = state.since.slice(0, 19);
  $('until').value = state.until.slice(0, 19);
  for (const bound of form.querySelectorAll('.bound')) bound.hidden = state.range !== 'custom';
  $('live').checked = state.live;
}

function takeForm() {
  state.q = $('q').value.trim();
  state.levels = [...form.querySelectorAll('input[name=level]:checked')].map((box) => box.value);
  state.device = $('device').value.trim();
  state.service = $('service').value.trim();
  state.trace = $('trace').value.trim();
  state.range = $('range').value;
}

for (const bound of ['since', 'until']) {
  $(bound).addEventListener('change', () => {
    state[bound] = utc($(bound).value);
  });
}

/** A `datetime-local` value, read as UTC. */
function utc(value) {
  if (!value) return '';
  return new Date(`${value.length === 16 ? `${value}:00` : value}Z`).toISOString();
}

/** The time range searched: a preset ends now. */
function bounds() {
  if (state.range === 'custom' && state.since && state.until) {
    return { since: state.since, until: state.until };
  }
  const until = new Date();
  const span = PRESETS[state.range] || PRESETS['1h'];
  return { since: new Date(until - span).toISOString(), until: until.toISOString() };
}

// ---- The query box -------------------------------------------------------------------

/** Words and "phrases" for `q`, and `data.<path>=value` filters, as the API takes them. */
function parseQuery(text) {
  const words = [];
  const fields = [];
  for (const token of text.match(/"[^"]*"?|\S+/g) || []) {
    const field = /^data\.([^=\s]+)=(.*)$/.exec(token);
    if (field) {
      fields.push([field[1], field[2].replace(/^"(.*)"$/, '$1')]);
    } else {
      words.push(token);
    }
  }
  return { q: words.join(' '), fields };
}

function searchParams({ withRange = true, forTail = false } = {}) {
  const params = new URLSearchParams();
  const { q, fields } = parseQuery(state.q);
  if (q) params.set('q', q);
  if (!forTail) for (const [path, value] of fields) params.append(`data.${path}`, value);
  if (state.levels.length) params.set('level', state.levels.join(','));
  if (state.device) params.set('device_id', state.device);
  if (state.service) params.set('service_name', state.service);
  if (state.trace) params.set('trace_id', state.trace);
  if (withRange) {
    const { since, until } = bounds();
    params.set('since', since);
    params.set('until', until);
  }
  return params;
}

// ---- The API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { 'X-API-Key': key } : {};
}

/** `path`'s JSON, or an ApiError saying what the API said. */
async function get(path, signal) {
  const answer = await fetch(path, { headers: headers(), signal });
  if (answer.ok) return answer.json();
  throw await failure(answer);
}

async function failure(answer) {
  let body = null;
  try {
    body = await answer.json();
  } catch {
    body = null;
  }
  const detail = body && typeof body.detail === 'string' ? body.detail : answer.statusText;
  if (answer.status === 429) {
    const wait = answer.headers.get('Retry-After');
    return new ApiError(429, `${detail}${wait ? ` Try again in ${wait} s.` : ''}`);
  }
  return new ApiError(answer.status, detail || `HTTP ${answer.status}`);
}

function showError(error) {
  if (error.name === 'AbortError') return;
  if (error.status === 401) {
    askForKey(sessionStorage.getItem(KEY) ? 'That key was not accepted: it is unknown or no longer in force.' : null);
    return;
  }
  const box = $('error');
  box.textContent = error.status ? `${error.status}: ${error.message}` : error.message;
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// ---- The key ---------------------------------------------------------------------------

function askForKey(why) {
  const dialog = $('key-dialog');
  if (why) $('key-why').textContent = why;
  if (!dialog.open) dialog.showModal();
  $('key').focus();
}

$('key-form').addEventListener('submit', () => {
  sessionStorage.setItem(KEY, $('key').value.trim());
  $('key').value = '';
  $('forget').hidden = false;
  search();
});

$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  $('forget').hidden = true;
  stopLive();
  results.replaceChildren();
  askForKey(null);
});

// ---- Searching -------------------------------------------------------------------------

async function search() {
  const mine = ++generation;
  clearError();
  writeUrl();
  next = null;
  results.replaceChildren();
  $('more').textContent = '';
  $('notice').hidden = true;
  $('fresh').hidden = true;
  const started = performance.now();
  const params = searchParams();
  drawHistogram(params, mine);
  try {
    const page = await get(`/api/logs?${params}&limit=${PAGE}`);
    if (mine !== generation) return;
    append(page.data);
    next = page.next;
    $('status').textContent = `${page.total}${next ? '+' : ''} logs · ${Math.round(performance.now() - started)} ms`;
    showMore();
    if (state.live) startLive();
  } catch (error) {
    if (mine === generation) showError(error);
  }
}

async function loadMore() {
  if (!next || loading) return;
  const mine = generation;
  loading = true;
  $('more').textContent = 'Loading more…';
  try {
    const page = await get(`/api/logs?${searchParams()}&limit=${PAGE}&cursor=${encodeURIComponent(next)}`);
    if (mine !== generation) return;
    append(page.data);
    next = page.next;
    showMore();
  } catch (error) {
    showError(error);
  } finally {
    loading = false;
  }
}

function showMore() {
  const shown = results.childElementCount;
  $('more').textContent = next ? `${shown} shown; scroll for more` : `${shown} shown; no more logs in the range`;
}

new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadMore();
}, { rootMargin: '400px' }).observe($('more'));

// ---- A log, as a row -------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function timeText(iso) {
  return iso ? iso.replace('T', ' ').replace(/(\.\d{3})\d*/, '$1').replace(/Z$|\+00:00$/, '') : '';
}

function chip(text, apply) {
  const button = element('button', 'chip', text);
  button.type = 'button';
  button.title = `Only these logs (${text})`;
  button.addEventListener('click', (event) => {
    event.stopPropagation();
    apply();
    showState();
    search();
  });
  return button;
}

function row(log) {
  const item = element('li', 'row');
  const line = element('div', 'line');
  const toggle = element('button', 'toggle', timeText(log.created_at));
  toggle.type = 'button';
  toggle.setAttribute('aria-expanded', 'false');
  toggle.title = log.created_at || '';
  const level = element('span', `level ${LEVELS.includes(log.log_level) ? log.log_level : ''}`, log.log_level);
  const source = element('span', 'source');
  source.append(chip(log.device_id, () => { state.device = log.device_id; }));
  if (log.service_name) {
    source.append(' · ', chip(log.service_name, () => { state.service = log.service_name; }));
  }
  const message = element('span', 'message', log.message ?? '');
  line.append(toggle, level, source, message);
  item.append(line);
  const expand = () => {
    const open = toggle.getAttribute('aria-expanded') === 'true';
    toggle.setAttribute('aria-expanded', String(!open));
    if (open) {
      item.querySelector('.details')?.remove();
    } else {
      item.append(details(log));
    }
  };
  toggle.addEventListener('click', (event) => {
    event.stopPropagation();
    expand();
  });
  line.addEventListener('click', (event) => {
    if (!window.getSelection()?.toString()) expand();
  });
  return item;
}

function details(log) {
  const box = element('div', 'details');
  const list = element('dl');
  const add = (name, value, filter) => {
    if (value === null || value === undefined || value === '') return;
    list.append(element('dt', null, name));
    const cell = element('dd');
    cell.append(filter ? chip(value, filter) : String(value));
    list.append(cell);
  };
  add('device', log.device_id, () => { state.device = log.device_id; });
  add('service', log.service_name, () => { state.service = log.service_name; });
  add('trace', log.trace_id, () => { state.trace = log.trace_id; });
  add('span', log.span_id);
  add('message id', log.message_id);
  add('id', log.id);
  add('received', log.created_at);
  box.append(list);
  if (log.log_data !== null && log.log_data !== undefined) {
    box.append(element('pre', 'data', JSON.stringify(log.log_data, null, 2)));
  }
  return box;
}

function append(logs) {
  const rows = document.createDocumentFragment();
  for (const log of logs) rows.append(row(log));
  results.append(rows);
}

// ---- The histogram ---------------------------------------------------------------------

async function drawHistogram(params, mine) {
  try {
    const answer = await get(`/api/logs/histogram?${params}`);
    if (mine !== generation) return;
    histogram = { ...answer, step: INTERVALS[answer.interval] || 60e3 };
    paint();
  } catch (error) {
    if (mine === generation) showError(error);
  }
}

function colour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
}

function paint(selection) {
  const scale = window.devicePixelRatio || 1;
  const width = chart.clientWidth;
  const height = chart.clientHeight;
  chart.width = Math.round(width * scale);
  chart.height = Math.round(height * scale);
  const context = chart.getContext('2d');
  context.scale(scale, scale);
  context.clearRect(0, 0, width, height);
  if (!histogram) return;
  const since = Date.parse(histogram.since);
  const until = Date.parse(histogram.until);
  const span = Math.max(until - since, 1);
  const top = Math.max(1, ...histogram.buckets.map((bucket) => bucket.count));
  const plot = { left: 4, right: width - 4, top: 14, bottom: height - 16 };
  const x = (time) => plot.left + ((time - since) / span) * (plot.right - plot.left);
  const barWidth = Math.max(1, x(since + histogram.step) - x(since) - 1);
  for (const bucket of histogram.buckets) {
    let y = plot.bottom;
    for (const level of LEVELS) {
      const count = bucket.levels?.[level] || 0;
      if (!count) continue;
      const h = (count / top) * (plot.bottom - plot.top);
      context.fillStyle = colour(level);
      context.fillRect(x(Date.parse(bucket.at)), y - h, barWidth, h);
      y -= h;
    }
  }
  context.fillStyle = colour('muted');
  context.font = '11px system-ui, sans-serif';
  context.fillText(`at most ${top} logs per ${histogram.interval}`, plot.left + 2, 11);
  const label = (time) => new Date(time).toISOString().slice(5, 16).replace('T', ' ');
  context.fillText(label(since), plot.left, height - 3);
  const end = label(until);
  context.fillText(end, plot.right - context.measureText(end).width, height - 3);
  if (selection) {
    context.fillStyle = 'rgba(120, 140, 170, 0.3)';
    context.fillRect(Math.min(...selection), plot.top, Math.abs(selection[1] - selection[0]), plot.bottom - plot.top);
  }
  chart.setAttribute('aria-label', `${histogram.total} logs from ${histogram.since} to ${histogram.until}, ${histogram.interval} a bar`);
}

/** Dragging across the chart searches the range dragged over. */
let dragFrom = null;
chart.addEventListener('pointerdown', (event) => {
  dragFrom = event.offsetX;
  chart.setPointerCapture(event.pointerId);
});
chart.addEventListener('pointermove', (event) => {
  if (dragFrom !== null) paint([dragFrom, event.offsetX]);
});
chart.addEventListener('pointerup', (event) => {
  if (dragFrom === null || !histogram) return;
  const [from, to] = [dragFrom, event.offsetX].sort((a, b) => a - b);
  dragFrom = null;
  if (to - from < 3) {
    paint();
    return;
  }
  const since = Date.parse(histogram.since);
  const span = Date.parse(histogram.until) - since;
  const time = (offset) => new Date(since + ((offset - 4) / (chart.clientWidth - 8)) * span);
  state.range = 'custom';
  state.since = time(Math.max(from, 4)).toISOString();
  state.until = time(Math.min(to, chart.clientWidth - 4)).toISOString();
  stopLive();
  state.live = false;
  showState();
  search();
});
window.addEventListener('resize', () => paint());

// ---- Live ------------------------------------------------------------------------------

/** New logs waiting to be drawn, newest last. */
let arrived = [];
let held = 0;

function startLive() {
  stopLive();
  if (parseQuery(state.q).fields.length) {
    notice('Live shows new logs by words, levels, device, service and trace; data. filters apply to searches only.');
  }
  const controller = new AbortController();
  live = controller;
  follow(controller).catch((error) => {
    if (live === controller) {
      live = null;
      showError(error);
    }
  });
  requestAnimationFrame(drawArrived);
}

function stopLive() {
  if (live) live.abort();
  live = null;
  delete document.body.dataset.live;
}

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
}

/** Reads the tail's Server-Sent Events (with the key as a header, which EventSource cannot send). */
async function follow(controller) {
  const answer = await fetch(`/api/logs/tail?${searchParams({ withRange: false, forTail: true })}`, {
    headers: { ...headers(), Accept: 'text/event-stream' },
    signal: controller.signal,
  });
  if (!answer.ok) throw await failure(answer);
  // The answer has begun: every log accepted from now on is delivered.
  document.body.dataset.live = 'following';
  const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(0, 'The live stream ended; turn Live on again to follow.');
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of event.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (name === 'log') arrived.push(JSON.parse(data.join('\n')));
      else if (name === 'missed') notice(`Live fell behind: ${data.join('')} logs went by unseen (this page read too slowly).`);
    }
  }
}

/** Draws what arrived since the last frame, in one batch; holds it while the list is scrolled down. */
function drawArrived() {
  if (!live) {
    arrived = [];
    return;
  }
  if (arrived.length) {
    if (window.scrollY > 40) {
      held += arrived.length;
      arrivedHeld.push(...arrived);
      const fresh = $('fresh');
      fresh.textContent = `${held} new logs: show them`;
      fresh.hidden = false;
    } else {
      prepend(arrived);
    }
    arrived = [];
  }
  requestAnimationFrame(drawArrived);
}

let arrivedHeld = [];

function prepend(logs) {
  const rows = document.createDocumentFragment();
  for (let index = logs.length - 1; index >= 0; index -= 1) rows.append(row(logs[index]));
  results.prepend(rows);
  while (results.childElementCount > MOST_ROWS) results.lastElementChild.remove();
  $('status').textContent = `live · ${results.childElementCount} logs shown`;
}

$('fresh').addEventListener('click', () => {
  prepend(arrivedHeld);
  arrivedHeld = [];
  held = 0;
  $('fresh').hidden = true;
  window.scrollTo({ top: 0 });
});

$('live').addEventListener('change', () => {
  state.live = $('live').checked;
  writeUrl();
  if (state.live) startLive();
  else stopLive();
});

// ---- The form and the keyboard ---------------------------------------------------------

form.addEventListener('submit', (event) => {
  event.preventDefault();
  takeForm();
  showState();
  search();
});

$('range').addEventListener('change', () => {
  takeForm();
  if (state.range === 'custom' && (!state.since || !state.until)) {
    const { since, until } = (() => {
      const until = new Date();
      return { since: new Date(until - PRESETS['1h']).toISOString(), until: until.toISOString() };
    })();
    state.since = since;
    state.until = until;
  }
  showState();
  if (state.range !== 'custom') search();
});

for (const box of form.querySelectorAll('input[name=level]')) {
  box.addEventListener('change', () => {
    takeForm();
    search();
  });
}

document.addEventListener('keydown', (event) => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement?.tagName || '');
  if (event.key === '/' && !typing) {
    event.preventDefault();
    $('q').focus();
  }
});

if (sessionStorage.getItem(KEY)) $('forget').hidden = false;
showState();
search();
