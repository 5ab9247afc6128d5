// chatd web demo: plain script, no build step. Uses the centrifuge-js bundle (global Centrifuge).
//
// URL parameters: ?room=chat:NAME opens that room (the page keeps it in the URL, so a link opens
// the room); ?token=JWT signs in with that token instead of /demo/token; ?user=NAME pre-fills
// the name.
//
// One connection holds every room of the user's list (kept in localStorage), so rooms not shown
// count their unread messages. The shown room's messages sit in the scroller; the others keep
// their own list element, detached, until shown again. Messages are dated by the server ("ts"
// in the data, Unix ms). A sent message shows as pending until the server acknowledges it and
// as failed, with the server's reason and a Retry button, when it refuses it.
//
// The assistant: Ask (or a message starting with "/ask ") calls the llm.ask RPC and posts the
// question in the room; every member sees the answer stream in (llm.start, llm.delta) until the
// stored answer replaces it. The asker sees its place in the queue (the RPC result, then the
// llm.queued notices on its personal channel) and its daily quota.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const urlToken = params.get('token');
  const TYPING_SEND_EVERY_MS = 2000;
  const TYPING_SHOW_MS = 3000;
  const PAGE = 50; // history page size
  const ASK_PREFIX = '/ask ';
  const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/; // the server's rule for demo names
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const MAX_ROOMS = 50;
  const STORE_NAME = 'chatd.name';
  const STORE_ROOMS = 'chatd.rooms';
  // With ?token= there is no /demo/token to ask: the default namespaces are assumed.
  const DEFAULT_NAMESPACES = [{ namespace: 'chat', history: true, presence: true, llm: true }];

  let client = null;
  let me = '';
  let node = ''; // the node named by /demo/token, until the connection names its own
  let namespaces = DEFAULT_NAMESPACES;
  const rooms = new Map(); // channel -> room (see newRoom)
  let current = null; // the room shown
  let typingSub = null; // the shown room's typing channel
  const typing = new Map(); // user -> timer, in the shown room
  const llmStreams = new Map(); // request_id -> answer being streamed (see streamOf)
  const myAsks = new Map(); // request_id -> { li, prompt } of this user's questions in flight
  const ended = new Set(); // request ids whose stored message or error has been seen
  let lastTypingSent = 0;
  let lastTokenRetry = 0;
  let tokenRetryTimer = null;

  // ---- small helpers

  function uuid() {
    if (crypto.randomUUID) {
      return crypto.randomUUID();
    }
    // Not a secure context (plain http on a LAN address): same format from getRandomValues.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // The browser's storage (where, default localStorage: every tab of the browser; sessionStorage:
  // this tab, across its reloads).
  function stored(key, fallback, where = 'localStorage') {
    try {
      const v = window[where].getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback; // storage off, or not ours
    }
  }

  function store(key, value, where = 'localStorage') {
    try {
      if (value === null) {
        window[where].removeItem(key);
      } else {
        window[where].setItem(key, JSON.stringify(value));
      }
    } catch {
      // private mode: nothing remembered, the page works all the same
    }
  }

  function showError(text) {
    $('error').textContent = text || '';
  }

  function humanWait(ms) {
    const s = Math.max(1, Math.ceil(ms / 1000));
    if (s < 60) {
      return `${s} s`;
    }
    if (s < 3600) {
      return `${Math.ceil(s / 60)} min`;
    }
    const h = Math.floor(s / 3600);
    const min = Math.ceil((s % 3600) / 60);
    return min ? `${h} h ${min} min` : `${h} h`;
  }

  // An error as a person reads it: the server's reason, its code, and the wait it asks for
  // ("retry_after_ms=N" in its message).
  function describeError(e) {
    const msg = String((e && e.message) || '');
    const m = /retry_after_ms=(\d+)/.exec(msg);
    const text = msg.replace(/:?\s*retry_after_ms=\d+/, '').replace(/\s*plan=\S+/, '').trim() || `error ${e.code}`;
    return m ? `${text} (${e.code}), try again in ${humanWait(Number(m[1]))}` : `${text} (${e.code})`;
  }

  function timeText(ts) {
    const d = new Date(ts);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === now.toDateString() ? hm : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
  }

  // ---- sign-in

  function nameProblem(name) {
    if (name.length === 0) {
      return '';
    }
    if (name.length > 32) {
      return 'At most 32 characters.';
    }
    const bad = [...new Set(name.replace(/[A-Za-z0-9_-]/g, ''))];
    if (bad.length > 0) {
      const shown = bad.map((c) => (c === ' ' ? 'spaces' : `“${c}”`)).join(', ');
      return `Not allowed: ${shown}. Use letters, digits, _ or -.`;
    }
    return '';
  }

  function checkName() {
    const name = $('name').value;
    const problem = nameProblem(name);
    $('name-error').textContent = problem;
    $('name').setAttribute('aria-invalid', problem ? 'true' : 'false');
    $('join').disabled = !NAME_RE.test(name);
  }

  async function fetchToken(user) {
    let res;
    try {
      res = await fetch(`/demo/token?user=${encodeURIComponent(user)}`);
    } catch {
      throw new Error('the server cannot be reached');
    }
    if (!res.ok) {
      const why = (await res.text().catch(() => '')).trim();
      throw new Error(why ? `the server refused: ${why}` : `/demo/token answered ${res.status}`);
    }
    const body = await res.json();
    node = body.node || node;
    if (Array.isArray(body.rooms) && body.rooms.length > 0) {
      namespaces = body.rooms;
    }
    return body.token;
  }

  // ---- rooms

  // "lobby" or "chat:lobby" as a channel of a namespace that has rooms, or a reason why not.
  function roomChannel(text) {
    const t = text.trim();
    const colon = t.indexOf(':');
    const ns = colon >= 0 ? t.slice(0, colon) : namespaces[0].namespace;
    const name = colon >= 0 ? t.slice(colon + 1) : t;
    const known = namespaces.find((n) => n.namespace === ns);
    if (!known) {
      const where = namespaces.map((n) => n.namespace || '(no prefix)').join(', ');
      return { problem: `“${ns}” has no rooms; rooms can be made in: ${where}.` };
    }
    if (!ROOM_RE.test(name)) {
      return { problem: 'Room names are 1 to 64 letters, digits, _ . or -.' };
    }
    return { channel: ns ? `${ns}:${name}` : name, ns: known };
  }

  function roomLabel(channel) {
    const colon = channel.indexOf(':');
    return colon >= 0 && channel.slice(0, colon) === namespaces[0].namespace ? channel.slice(colon + 1) : channel;
  }

  function newRoom(channel, ns) {
    const list = document.createElement('ul');
    list.className = 'messages';
    list.dataset.testid = 'messages';
    list.setAttribute('role', 'log');
    list.setAttribute('aria-label', `Messages in ${roomLabel(channel)}`);
    const room = {
      channel, ns, list, sub: null,
      seen: new Set(), // offsets shown: history and live publications overlap
      epoch: '',
      oldest: 0, // the oldest offset shown
      newest: 0, // the newest
      sent: 0, // messages sent from this page
      more: false, // older messages to fetch
      online: new Map(), // client id -> user
      unread: 0,
      pending: new Map(), // client_msg_id -> line of a message not yet seen back
      scrollTop: null, // where the reader was, while another room is shown
      problem: '',
    };
    rooms.set(channel, room);
    saveRooms();
    renderRooms();
    return room;
  }

  function saveRooms() {
    store(STORE_ROOMS, [...rooms.keys()]);
  }

  function renderRooms() {
    const items = [...rooms.values()].map((room) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'room';
      b.dataset.testid = 'room';
      b.dataset.room = room.channel;
      b.textContent = roomLabel(room.channel);
      if (room === current) {
        b.setAttribute('aria-current', 'page');
      }
      if (room.unread > 0) {
        const u = document.createElement('span');
        u.className = 'unread';
        u.dataset.testid = 'unread';
        u.textContent = room.unread > 99 ? '99+' : String(room.unread);
        const said = document.createElement('span');
        said.className = 'visually-hidden';
        said.textContent = ' unread';
        b.append(' ', u, said);
      }
      b.addEventListener('click', () => showRoom(room.channel, true));
      const leave = document.createElement('button');
      leave.type = 'button';
      leave.className = 'leave';
      leave.dataset.testid = 'leave-room';
      leave.textContent = '×';
      leave.title = `Leave ${roomLabel(room.channel)}`;
      leave.setAttribute('aria-label', `Leave ${roomLabel(room.channel)}`);
      leave.dataset.room = room.channel;
      leave.addEventListener('click', () => leaveRoom(room));
      li.append(b);
      if (rooms.size > 1) {
        li.append(leave); // the last room stays: the page always shows one
      }
      return li;
    });
    const focused = document.activeElement;
    const refocus = focused && focused.closest && focused.closest('#rooms') ? focused.dataset : null;
    $('rooms').replaceChildren(...items);
    if (refocus) {
      // The buttons are new: the keyboard user's focus goes to the same one again (or, when
      // its room was left, to the room field).
      const same = $('rooms').querySelector(`[data-testid="${refocus.testid}"][data-room="${CSS.escape(refocus.room || '')}"]`);
      (same || $('new-room')).focus();
    }
  }

  // Out of the room: unsubscribed (the others see the leave), off the list; the page shows
  // the next room, or the lobby when none is left.
  function leaveRoom(room) {
    if (room.sub) {
      room.sub.unsubscribe();
      client.removeSubscription(room.sub);
    }
    rooms.delete(room.channel);
    saveRooms();
    if (room === current) {
      current = null;
      const next = rooms.keys().next();
      showRoom(next.done ? 'lobby' : next.value, true);
    } else {
      renderRooms();
    }
  }

  function joinRoom(channel, ns) {
    const room = rooms.get(channel) || newRoom(channel, ns);
    if (client && !room.sub) {
      subscribeRoom(room);
    }
    return room;
  }

  // Shows room (joining it first when new); push: a new entry in the browser's history.
  function showRoom(channel, push) {
    const parsed = roomChannel(channel);
    if (parsed.problem) {
      $('room-error').textContent = parsed.problem;
      return;
    }
    if (!rooms.has(parsed.channel) && rooms.size >= MAX_ROOMS) {
      // The server holds a bounded number of subscriptions per connection (CHAT_MAX_CHANNELS).
      $('room-error').textContent = `At most ${MAX_ROOMS} rooms: leave one first.`;
      return;
    }
    const room = joinRoom(parsed.channel, parsed.ns);
    if (current === room) {
      return;
    }
    const scroller = $('scroller');
    if (current) {
      current.scrollTop = scroller.scrollTop;
    }
    current = room;
    room.unread = 0;
    $('list-slot').replaceChildren(room.list);
    $('room-title').textContent = roomLabel(room.channel);
    document.title = `${roomLabel(room.channel)} · chatd`;
    scroller.scrollTop = room.scrollTop === null ? scroller.scrollHeight : room.scrollTop;
    updateOlder();
    renderRooms();
    renderPresence();
    typing.forEach((timer) => clearTimeout(timer));
    typing.clear();
    renderTyping();
    watchTyping(room);
    showError(room.problem);
    $('ask').hidden = !room.ns.llm;
    const url = new URL(location.href);
    url.searchParams.set('room', room.channel);
    if (push) {
      history.pushState({ room: room.channel }, '', url);
    } else {
      history.replaceState({ room: room.channel }, '', url);
    }
    if (client && client.state === 'connected' && room.sub && room.sub.state === 'subscribed') {
      loadPresence(room);
    }
  }

  // ---- rendering messages

  function atBottom() {
    const s = $('scroller');
    return s.scrollTop + s.clientHeight >= s.scrollHeight - 40;
  }

  function keepBottom(room, was) {
    if (room === current && was) {
      $('scroller').scrollTop = $('scroller').scrollHeight;
    }
  }

  function addLine(room, { sender, text, mine, cls, offset, ts }) {
    const li = document.createElement('li');
    li.dataset.testid = 'message';
    if (offset) {
      li.dataset.offset = String(offset);
    }
    if (mine) {
      li.classList.add('mine');
    }
    if (cls) {
      li.classList.add(cls);
    }
    const head = document.createElement('div');
    head.className = 'head';
    if (sender) {
      const s = document.createElement('span');
      s.className = 'sender';
      s.dataset.testid = 'message-sender';
      s.textContent = sender;
      head.append(s);
    }
    if (Number.isFinite(ts) && Math.abs(ts) < 8.64e15) { // else new Date(ts) is invalid
      const tm = document.createElement('time');
      tm.className = 'time';
      tm.dataset.testid = 'message-time';
      tm.dateTime = new Date(ts).toISOString();
      tm.title = new Date(ts).toLocaleString();
      tm.textContent = timeText(ts);
      head.append(tm);
    }
    li.append(head);
    const tx = document.createElement('div');
    tx.className = 'text';
    tx.dataset.testid = 'message-text';
    tx.textContent = text;
    li.append(tx);
    const was = room === current && atBottom();
    // History may come after live messages: the list stays in offset order. A line without an
    // offset (pending, failed, streaming) sorts just after the newest message there was when it
    // came, so later messages go below it rather than above it forever.
    if (!offset) {
      li.dataset.after = String(room.newest);
    }
    const key = (x) => (x.dataset.offset ? Number(x.dataset.offset) : Number(x.dataset.after) + 0.5);
    const later = offset ? [...room.list.children].find((x) => key(x) > offset) : null;
    room.list.insertBefore(li, later || null);
    keepBottom(room, was);
    return li;
  }

  function addMark(li, text) {
    let m = li.querySelector('.mark');
    if (!m) {
      m = document.createElement('span');
      m.className = 'mark';
      m.dataset.testid = 'message-mark';
      li.querySelector('.head').append(m);
    }
    m.textContent = text;
  }

  function renderPublication(room, pub, live) {
    if (pub.offset) {
      if (room.seen.has(pub.offset)) {
        return;
      }
      room.seen.add(pub.offset);
      room.oldest = room.oldest ? Math.min(room.oldest, pub.offset) : pub.offset;
      room.newest = Math.max(room.newest, pub.offset);
      if (room === current && room.seen.size === 1) {
        updateOlder(); // the first message: "No messages yet" goes
      }
    }
    const d = pub.data || {};
    const user = pub.info ? pub.info.user : '';
    if (d.type === 'message' && d.role === 'assistant') {
      finishStream(d.request_id);
      const li = addLine(room, { sender: `assistant${d.model ? ` (${d.model})` : ''}`, text: d.text, cls: 'assistant', offset: pub.offset, ts: d.ts });
      li.dataset.requestId = d.request_id || '';
      li.dataset.state = d.cancelled ? 'cancelled' : d.interrupted ? 'interrupted' : 'done';
      if (d.cancelled || d.interrupted) {
        addMark(li, d.cancelled ? 'cancelled' : 'interrupted');
      }
      askDone(d.request_id);
      countUnread(room, live);
    } else if (d.type === 'message') {
      const waiting = d.client_msg_id ? room.pending.get(d.client_msg_id) : null;
      const mine = user === me || Boolean(waiting);
      if (waiting) {
        // Seen back from the server: the pending line gives way to the real one. Lines of
        // this page's later sends, still pending or failed, now follow this message.
        room.pending.delete(d.client_msg_id);
        waiting.remove();
        const seq = Number(waiting.dataset.seq);
        for (const x of room.list.querySelectorAll('li[data-seq]:not([data-offset])')) {
          if (Number(x.dataset.seq) > seq) {
            x.dataset.after = String(Math.max(Number(x.dataset.after), pub.offset || 0));
          }
        }
      }
      addLine(room, { sender: user, text: d.text, mine, offset: pub.offset, ts: d.ts });
      if (!mine) {
        countUnread(room, live);
      }
    } else if (d.type === 'llm.start') {
      const st = streamOf(room, d.request_id);
      st.li.querySelector('.sender').textContent = `assistant${d.model ? ` (${d.model})` : ''}`;
      askState(d.request_id, 'answering');
    } else if (d.type === 'llm.delta') {
      appendDelta(room, d);
    } else if (d.type === 'llm.error') {
      const st = llmStreams.get(d.request_id);
      const li = st ? st.li : addLine(room, { sender: 'assistant', text: '', cls: 'assistant' });
      llmStreams.delete(d.request_id); // the line stays, marked failed, instead of vanishing
      li.dataset.requestId = d.request_id || '';
      li.dataset.state = d.code === 499 ? 'cancelled' : 'failed';
      li.classList.add('failed');
      const tx = li.querySelector('.text');
      if (tx.textContent === '…') {
        tx.textContent = '';
      }
      addMark(li, d.code === 499 ? 'cancelled' : `could not answer: ${describeError(d)}`);
      askDone(d.request_id);
    }
  }

  function countUnread(room, live) {
    if (live && room !== current) {
      room.unread++;
      renderRooms();
    }
  }

  // ---- sending

  function publishLine(room, li, data) {
    li.dataset.state = 'pending';
    li.classList.remove('failed');
    addMark(li, 'sending…');
    const retry = li.querySelector('.retry');
    if (retry) {
      retry.remove();
    }
    room.sub.publish(data).then(() => {
      if (li.isConnected && li.dataset.state === 'pending') {
        li.dataset.state = 'sent'; // acknowledged; the line gives way when the message comes back
        addMark(li, 'sent');
      }
    }, (e) => {
      if (!room.pending.has(data.client_msg_id)) {
        return; // it came back after all
      }
      li.dataset.state = 'failed';
      li.classList.add('failed');
      addMark(li, `not sent: ${describeError(e)}`);
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'retry';
      b.dataset.testid = 'retry-button';
      b.textContent = 'Retry';
      // The same client_msg_id: should the first try have been published after all, the server
      // answers the retry without publishing it twice.
      b.addEventListener('click', () => {
        publishLine(room, li, data);
        $('text').focus(); // the button is gone
      });
      li.append(b);
    });
  }

  function sendMessage(room, text) {
    const data = { type: 'message', text, client_msg_id: uuid() };
    const li = addLine(room, { sender: me, text, mine: true, cls: 'pending' });
    li.dataset.clientMsgId = data.client_msg_id;
    li.dataset.seq = String(++room.sent); // the order of this page's sends
    room.pending.set(data.client_msg_id, li);
    $('scroller').scrollTop = $('scroller').scrollHeight;
    publishLine(room, li, data);
  }

  // ---- the assistant's answers

  // The answer of request id being streamed: a placeholder line that grows delta by delta.
  // Deltas carry an index; they are applied in index order, whatever order they come in.
  function streamOf(room, id) {
    let st = llmStreams.get(id);
    if (!st) {
      const li = addLine(room, { sender: 'assistant', text: '…', cls: 'assistant' });
      li.dataset.requestId = id;
      li.dataset.state = 'streaming';
      li.dataset.deltas = '0';
      st = { li, next: 0, early: new Map() };
      llmStreams.set(id, st);
    }
    return st;
  }

  function appendDelta(room, d) {
    const fresh = !llmStreams.has(d.request_id);
    const st = streamOf(room, d.request_id);
    if (fresh) {
      st.next = d.index; // joined mid-answer: the earlier text arrives with the stored message
    }
    if (d.index < st.next) {
      return; // already applied
    }
    st.early.set(d.index, d.text);
    const tx = st.li.querySelector('.text');
    const was = room === current && atBottom();
    while (st.early.has(st.next)) {
      tx.textContent = (tx.textContent === '…' ? '' : tx.textContent) + st.early.get(st.next);
      st.early.delete(st.next);
      st.next++;
      st.li.dataset.deltas = String(Number(st.li.dataset.deltas) + 1);
    }
    keepBottom(room, was);
  }

  // The stored message (or an error) ends a stream: its placeholder goes.
  function finishStream(id) {
    const st = llmStreams.get(id);
    if (st) {
      llmStreams.delete(id);
      if (st.li.dataset.state === 'streaming') {
        st.li.remove();
      }
    }
  }

  // ---- this user's questions: queue position, answering, Stop, quota

  function askLine(id, prompt) {
    const li = document.createElement('li');
    li.dataset.testid = 'ask';
    li.dataset.requestId = id;
    const label = document.createElement('span');
    label.className = 'ask-prompt';
    label.textContent = `“${prompt.length > 60 ? `${prompt.slice(0, 60)}…` : prompt}”`;
    const state = document.createElement('span');
    state.className = 'ask-state';
    state.dataset.testid = 'ask-state';
    const stop = document.createElement('button');
    stop.type = 'button';
    stop.textContent = 'Stop';
    stop.dataset.testid = 'ask-cancel';
    stop.addEventListener('click', () => {
      $('text').focus(); // the button goes with its line
      stop.disabled = true;
      client.rpc('llm.cancel', { request_id: id }).catch((e) => {
        stop.disabled = false;
        showError(`cancel: ${describeError(e)}`);
      });
    });
    li.append(label, state, stop);
    $('asks').append(li);
    myAsks.set(id, { li, prompt });
    return li;
  }

  function askState(id, state, position) {
    const a = myAsks.get(id);
    if (!a) {
      return;
    }
    if (a.li.dataset.state === 'answering' && state === 'queued') {
      return; // a late position notice
    }
    a.li.dataset.state = state;
    const tx = a.li.querySelector('.ask-state');
    if (state === 'queued') {
      a.li.dataset.position = String(position);
      tx.textContent = position > 1 ? `waiting: number ${position} in the queue` : 'next in the queue';
    } else {
      tx.textContent = 'answering…';
    }
  }

  function askDone(id) {
    ended.add(id);
    const a = myAsks.get(id);
    if (a) {
      a.li.remove();
      myAsks.delete(id);
    }
  }

  function showQuota(q) {
    if (!q || !q.limit) {
      return;
    }
    const left = Math.max(0, q.limit - q.used);
    const resets = new Date(q.reset_at * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    $('quota').textContent = `Assistant: ${q.used} of ${q.limit} questions used today, ${left} left (resets at ${resets}).`;
    $('quota').dataset.used = String(q.used);
    $('quota').dataset.limit = String(q.limit);
    $('quota').hidden = false;
  }

  // Server-side subscriptions (the personal channel) come as publications on the client.
  function personalPublication(ctx) {
    if (ctx.channel !== `personal:#${me}`) {
      return;
    }
    const d = ctx.data || {};
    if (d.type === 'llm.queued') {
      askState(d.request_id, 'queued', d.queue_position);
    }
  }

  async function ask(room, prompt) {
    if (!client || !room.sub) {
      return false;
    }
    showError('');
    try {
      const res = await client.rpc('llm.ask', { channel: room.channel, prompt });
      const { request_id: id, queue_position: position } = res.data;
      showQuota(res.data.quota);
      if (!ended.has(id)) { // else the whole answer came before this reply
        askLine(id, prompt);
        if (llmStreams.has(id)) {
          askState(id, 'answering'); // the stream began before this reply came
        } else {
          askState(id, 'queued', position);
        }
      }
    } catch (e) {
      showError(`assistant: ${describeError(e)}`);
      return false;
    }
    // Admitted: the question goes into the room too, so that every member sees what the answer
    // answers (after the ask, so a refused question leaves nothing behind).
    sendMessage(room, `${ASK_PREFIX}${prompt}`);
    return true;
  }

  // ---- presence and typing

  function renderPresence() {
    const ul = $('presence');
    if (!current) {
      ul.replaceChildren();
      return;
    }
    const users = [...new Set(current.online.values())].sort();
    ul.replaceChildren(...users.map((u) => {
      const li = document.createElement('li');
      li.dataset.testid = 'presence-user';
      li.dataset.user = u;
      li.textContent = u === me ? `${u} (you)` : u;
      return li;
    }));
  }

  function renderTyping() {
    const users = [...typing.keys()];
    $('typing').textContent = users.length === 0 ? '' : `${users.join(', ')} ${users.length === 1 ? 'is' : 'are'} typing…`;
  }

  function watchTyping(room) {
    if (typingSub) {
      typingSub.unsubscribe();
      client.removeSubscription(typingSub);
      typingSub = null;
    }
    if (!client) {
      return;
    }
    const channel = `typing:${room.channel.includes(':') ? room.channel.slice(room.channel.indexOf(':') + 1) : room.channel}`;
    if (client.getSubscription(channel)) {
      return; // a room of that name in the typing namespace itself: not offered (roomChannel)
    }
    typingSub = client.newSubscription(channel);
    typingSub.on('publication', (pub) => {
      const user = (pub.data && pub.data.user) || (pub.info && pub.info.user);
      if (!user || user === me) {
        return;
      }
      clearTimeout(typing.get(user));
      typing.set(user, setTimeout(() => {
        typing.delete(user);
        renderTyping();
      }, TYPING_SHOW_MS));
      renderTyping();
    });
    typingSub.on('error', () => {}); // best effort: a node without a typing namespace refuses it
    typingSub.subscribe();
  }

  function typed() {
    const now = Date.now();
    if (!client || !current || client.state !== 'connected' || now - lastTypingSent < TYPING_SEND_EVERY_MS) {
      return;
    }
    lastTypingSent = now;
    client.rpc('typing', { channel: current.channel }).catch(() => {}); // best effort, rate-limited by the server
  }

  // ---- history and presence of a room

  function updateOlder() {
    if (!current) {
      return;
    }
    $('older').hidden = !current.more;
    $('start').hidden = current.more || !current.ns.history;
    $('start').textContent = current.seen.size === 0 ? 'No messages yet.'
      : current.oldest > 1 ? 'Older messages are no longer kept.' : 'The beginning of this room.';
  }

  function forget(room) {
    room.seen.clear();
    room.oldest = 0;
    room.newest = 0;
    room.list.querySelectorAll('[data-offset]').forEach((li) => li.remove());
  }

  // The messages after the newest one shown, page by page (counted as unread in a room not
  // shown: they are new to the reader). A gap (the server no longer has them) or more than 20
  // pages: the room starts again from its newest page, with Older messages to go back.
  async function catchUp(room) {
    try {
      for (let pages = 0; pages < 20; pages++) {
        const h = await room.sub.history({ limit: PAGE, since: { offset: room.newest, epoch: room.epoch } });
        if (h.publications.length > 0 && h.publications[0].offset !== room.newest + 1) {
          break;
        }
        for (const p of h.publications) {
          renderPublication(room, p, true);
        }
        if (h.publications.length < PAGE) {
          return;
        }
      }
    } catch {
      // below: from the newest page
    }
    forget(room);
    loadHistory(room);
  }

  async function loadHistory(room) {
    try {
      // The newest page, shown oldest first.
      const h = await room.sub.history({ limit: PAGE, reverse: true });
      room.epoch = h.epoch;
      for (const p of h.publications.slice().reverse()) {
        renderPublication(room, p, false); // already shown ones are skipped by offset
      }
      room.more = h.publications.length === PAGE && room.oldest > 1;
      if (room === current) {
        $('scroller').scrollTop = $('scroller').scrollHeight;
        updateOlder();
      }
    } catch (e) {
      room.problem = `history: ${describeError(e)}`;
      if (room === current) {
        showError(room.problem);
      }
    }
  }

  // One page further back, before the oldest shown message; with a database behind the server
  // this reaches past the server's in-memory window, as far back as it keeps.
  async function loadOlder() {
    const room = current;
    const scroller = $('scroller');
    const before = scroller.scrollHeight;
    $('older').disabled = true;
    try {
      const since = { offset: room.oldest, epoch: room.epoch };
      const h = await room.sub.history({ limit: PAGE, reverse: true, since });
      for (const p of h.publications) {
        renderPublication(room, p, false); // placed by offset, above what is shown
      }
      room.more = h.publications.length === PAGE && room.oldest > 1;
      if (room === current) {
        scroller.scrollTop += scroller.scrollHeight - before; // the reader stays where they were
        updateOlder();
      }
    } catch (e) {
      showError(`history: ${describeError(e)}`);
    } finally {
      $('older').disabled = false;
    }
  }

  async function loadPresence(room) {
    if (!room.ns.presence) {
      return;
    }
    try {
      const p = await room.sub.presence();
      room.online.clear();
      for (const [id, info] of Object.entries(p.clients)) {
        room.online.set(id, info.user);
      }
      if (room === current) {
        renderPresence();
      }
    } catch (e) {
      if (room === current) {
        showError(`presence: ${describeError(e)}`);
      }
    }
  }

  function subscribeRoom(room) {
    const history = room.ns.history !== false;
    const sub = client.newSubscription(room.channel, { joinLeave: room.ns.presence !== false, recoverable: history, positioned: history });
    room.sub = sub;
    sub.on('subscribed', (ctx) => {
      room.problem = '';
      if (room === current) {
        showError('');
      }
      const epoch = ctx.streamPosition ? ctx.streamPosition.epoch : '';
      if (room.epoch && epoch && epoch !== room.epoch) {
        // The room's history was started again (a node without Redis restarted): offsets
        // start over, so what is shown cannot be matched against them.
        forget(room);
      }
      if (!ctx.recovered && history) {
        // First subscribe: the newest page. Back after the SDK could not recover (away longer
        // than the server's recovery allows): what was missed, from history.
        if (room.seen.size > 0) {
          catchUp(room);
        } else {
          loadHistory(room);
        }
      }
      if (room === current) {
        loadPresence(room);
      }
    });
    sub.on('publication', (pub) => renderPublication(room, pub, true));
    sub.on('join', (ctx) => {
      room.online.set(ctx.info.client, ctx.info.user);
      if (room === current) {
        renderPresence();
      }
    });
    sub.on('leave', (ctx) => {
      room.online.delete(ctx.info.client);
      if (room === current) {
        renderPresence();
      }
    });
    sub.on('unsubscribed', (ctx) => {
      if (ctx.code !== 0) {
        room.problem = `left ${room.channel}: ${ctx.reason} (${ctx.code})`;
        if (room === current) {
          showError(room.problem);
        }
      }
    });
    sub.on('error', (ctx) => {
      room.problem = `${room.channel}: ${describeError(ctx.error)}`;
      if (room === current) {
        showError(room.problem);
      }
    });
    sub.subscribe();
  }

  // ---- connection state

  function setState(state) {
    const badge = $('status');
    badge.dataset.state = state;
    const connected = state === 'connected';
    // centrifuge-js keeps the node named in the connect reply (Centrifugo's ConnectResult.node)
    // without a getter; /demo/token's node stands in until a connection names one.
    const serving = (client && client._node) || node;
    $('status-text').textContent = state;
    $('node').textContent = connected && serving ? ` · ${serving}` : '';
    $('node').dataset.node = connected ? serving : '';
    // Nothing can be sent while disconnected, and who is online is no longer known.
    $('text').disabled = !connected;
    $('send').disabled = !connected;
    $('ask').disabled = !connected;
    $('presence').dataset.stale = connected ? 'false' : 'true';
    $('presence').setAttribute('aria-description', connected ? '' : 'not up to date while disconnected');
  }

  function connect(token) {
    const options = { token };
    if (!urlToken) {
      options.getToken = () => fetchToken(me); // before expiry (109), and after a 3500 below
    }
    client = new Centrifuge(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/connection/websocket`, options);
    client.on('state', (ctx) => setState(ctx.newState));
    client.on('connected', () => {
      setState('connected');
      if (!document.activeElement || document.activeElement === document.body) {
        $('text').focus(); // the composer was disabled until now, or lost the focus with it
      }
      if (current && !current.problem) {
        showError('');
      }
    });
    client.on('disconnected', (ctx) => {
      // 3500: the token is no longer valid, e.g. the demo node restarted with a new secret.
      // The SDK stops there; a page that can get tokens gets one and connects again (at most
      // once every 10 s, so a node that refuses every token is not hammered).
      if (ctx.code === 3500 && !urlToken) {
        const wait = Math.max(0, lastTokenRetry + 10_000 - Date.now());
        clearTimeout(tokenRetryTimer);
        tokenRetryTimer = setTimeout(() => {
          lastTokenRetry = Date.now();
          client.setToken('');
          client.connect();
        }, wait);
        if (wait === 0) {
          return;
        }
      }
      showError(`disconnected: ${ctx.reason} (${ctx.code})`);
    });
    client.on('error', (ctx) => {
      if (ctx.error && ctx.type !== 'transport' && ctx.type !== 'connect') {
        showError(`${ctx.type}: ${describeError(ctx.error)}`);
      }
    });
    client.on('publication', personalPublication);
    for (const room of rooms.values()) {
      subscribeRoom(room);
    }
    client.connect();
  }

  // The user id (sub) of a JWT, or '' when it cannot be read.
  function tokenUser(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
      return typeof claims.sub === 'string' ? claims.sub : '';
    } catch {
      return '';
    }
  }

  async function signIn(name, roomText) {
    $('join').disabled = true;
    $('join-error').textContent = '';
    let token = urlToken;
    if (token) {
      name = tokenUser(token) || name; // who the server will take this page for
    }
    try {
      if (!token) {
        token = await fetchToken(name);
      }
    } catch (e) {
      $('join-error').textContent = `Could not sign in: ${e.message}.`;
      checkName();
      return;
    }
    const first = roomChannel(roomText || 'lobby');
    if (first.problem) {
      $('join-error').textContent = first.problem;
      checkName();
      return;
    }
    me = name;
    // The name fills the form of every new tab; this tab alone signs in with it again on a
    // reload (a second tab may be someone else, as in the quick start's two tabs).
    store(STORE_NAME, name);
    store(STORE_NAME, name, 'sessionStorage');
    $('me').textContent = name;
    $('me').hidden = false;
    $('sign-out').hidden = false;
    $('join-form').hidden = true;
    $('chat').hidden = false;
    const saved = stored(STORE_ROOMS, []);
    for (const channel of (Array.isArray(saved) ? saved : []).slice(0, MAX_ROOMS - 1)) {
      const r = typeof channel === 'string' ? roomChannel(channel) : { problem: 'not a name' };
      if (!r.problem && !rooms.has(r.channel)) {
        newRoom(r.channel, r.ns);
      }
    }
    joinRoom(first.channel, first.ns);
    connect(token);
    showRoom(first.channel, false);
    $('text').focus();
  }

  function signOut() {
    store(STORE_NAME, null);
    store(STORE_NAME, null, 'sessionStorage');
    store(STORE_ROOMS, null); // the next person on this browser starts afresh
    if (client) {
      client.disconnect();
    }
    // A fresh page: no state of this user stays behind. The room stays in the URL.
    const url = new URL(location.href);
    url.searchParams.delete('user');
    url.searchParams.delete('token');
    location.assign(url);
  }

  // ---- wiring

  $('name').addEventListener('input', checkName);
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('name').value;
    if (!NAME_RE.test(name)) {
      checkName();
      $('name').focus();
      return;
    }
    signIn(name, $('room').value);
  });
  $('room-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('new-room').value;
    const r = roomChannel(text);
    $('room-error').textContent = r.problem || '';
    if (r.problem) {
      $('new-room').setAttribute('aria-invalid', 'true');
      return;
    }
    $('new-room').setAttribute('aria-invalid', 'false');
    $('new-room').value = '';
    showRoom(r.channel, true);
    $('text').focus();
  });
  $('new-room').addEventListener('input', () => {
    $('room-error').textContent = '';
    $('new-room').setAttribute('aria-invalid', 'false');
  });
  $('composer').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('text').value.trim();
    if (!text || !current || !current.sub) {
      return;
    }
    $('text').value = '';
    if (text.startsWith(ASK_PREFIX) && text.length > ASK_PREFIX.length && current.ns.llm) {
      if (!(await ask(current, text.slice(ASK_PREFIX.length).trim()))) {
        $('text').value = text; // keep it for another try
      }
      return;
    }
    sendMessage(current, text);
  });
  $('ask').addEventListener('click', async () => {
    const prompt = $('text').value.trim().replace(/^\/ask\s+/, '');
    if (!prompt) {
      $('text').placeholder = 'Type a question for the assistant, then Ask';
      $('text').focus();
      return;
    }
    $('text').value = '';
    if (!(await ask(current, prompt))) {
      $('text').value = prompt;
    }
  });
  $('text').addEventListener('input', typed);
  $('older').addEventListener('click', loadOlder);
  $('sign-out').addEventListener('click', signOut);
  window.addEventListener('popstate', () => {
    const channel = new URLSearchParams(location.search).get('room');
    if (!client || !channel) {
      return;
    }
    if (!rooms.has(channel)) {
      // Left earlier: going Back does not join it again behind the user's back.
      $('room-error').textContent = `You left ${channel}; join it again with the room field.`;
      if (current) {
        const url = new URL(location.href);
        url.searchParams.set('room', current.channel);
        history.replaceState({ room: current.channel }, '', url);
      }
      return;
    }
    showRoom(channel, false);
  });

  setState('disconnected');
  const urlRoom = params.get('room');
  if (urlRoom) {
    $('room').value = urlRoom;
  }
  const remembered = stored(STORE_NAME, '');
  const thisTab = stored(STORE_NAME, '', 'sessionStorage');
  $('name').value = params.get('user') || (typeof remembered === 'string' ? remembered : '');
  checkName();
  if (typeof thisTab === 'string' && NAME_RE.test(thisTab) && !params.get('user')) {
    signIn(thisTab, $('room').value); // this tab signed in before, not signed out: straight in
  } else {
    $('name').focus();
  }
})();
