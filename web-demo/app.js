// chatd web demo: plain script, no build step. Uses the centrifuge-js bundle (global Centrifuge).
// URL parameters: ?token=JWT (skip /demo/token), ?user=NAME and ?room=chat:NAME (pre-fill).
// The assistant: the Ask button (or a message starting with "/ask ") calls the llm.ask RPC and
// posts the question in the room; every member sees the answer stream in (llm.start, llm.delta)
// until the stored assistant message replaces it. The asker sees its place in the queue from the
// RPC result and the llm.queued notices on its personal channel.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const TYPING_SEND_EVERY_MS = 2000;
  const TYPING_SHOW_MS = 3000;

  let client = null;
  let sub = null;
  let typingSub = null;
  let me = '';
  let room = '';
  const seenOffsets = new Set(); // history and live publications may overlap
  const PAGE = 50; // history page size
  let roomEpoch = ''; // the room's history epoch, for paging back with since
  const online = new Map(); // client id -> user
  const typing = new Map(); // user -> timer
  const llmStreams = new Map(); // request_id -> answer being streamed (see streamOf)
  const myAsks = new Map(); // request_id -> { li, prompt } of this user's questions in flight
  const ended = new Set(); // request ids whose stored message or error has been seen
  const ASK_PREFIX = '/ask ';
  let lastTypingSent = 0;

  $('name').value = params.get('user') || '';
  $('room').value = params.get('room') || 'chat:lobby';

  function setState(state) {
    $('status').textContent = state;
    $('status').dataset.state = state;
  }

  function showError(text) {
    $('error').textContent = text || '';
  }

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

  async function fetchToken(user) {
    const res = await fetch(`/demo/token?user=${encodeURIComponent(user)}`);
    if (!res.ok) {
      throw new Error(`/demo/token answered ${res.status}`);
    }
    return (await res.json()).token;
  }

  // ---- rendering

  function addLine({ sender, text, mine, cls, offset, time }) {
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
    if (sender) {
      const s = document.createElement('span');
      s.className = 'sender';
      s.dataset.testid = 'message-sender';
      s.textContent = sender;
      li.append(s);
    }
    const tx = document.createElement('span');
    tx.className = 'text';
    tx.dataset.testid = 'message-text';
    tx.textContent = text;
    li.append(tx);
    if (time) {
      const tm = document.createElement('span');
      tm.className = 'time';
      tm.textContent = time;
      li.append(tm);
    }
    const list = $('messages');
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 20;
    // History comes after live messages may have arrived: keep the list in offset order.
    const later = offset ? [...list.children].find((x) => Number(x.dataset.offset) > offset) : null;
    list.insertBefore(li, later || null);
    if (atBottom) {
      list.scrollTop = list.scrollHeight;
    }
    return li;
  }

  function systemLine(text) {
    addLine({ text, cls: 'system' });
  }

  function renderPublication(pub, live) {
    if (pub.offset) {
      if (seenOffsets.has(pub.offset)) {
        return;
      }
      seenOffsets.add(pub.offset);
    }
    const d = pub.data || {};
    const user = pub.info ? pub.info.user : '';
    const time = live ? new Date().toLocaleTimeString() : ''; // publications carry no timestamp
    if (d.type === 'message' && d.role === 'assistant') {
      finishStream(d.request_id);
      const li = addLine({ sender: `assistant${d.model ? ` (${d.model})` : ''}`, text: d.text, cls: 'assistant', offset: pub.offset });
      li.dataset.requestId = d.request_id || '';
      li.dataset.state = d.cancelled ? 'cancelled' : d.interrupted ? 'interrupted' : 'done';
      if (d.cancelled || d.interrupted) {
        addMark(li, d.cancelled ? 'cancelled' : 'interrupted');
      }
      askDone(d.request_id);
    } else if (d.type === 'message') {
      addLine({ sender: user, text: d.text, mine: user === me, offset: pub.offset, time });
    } else if (d.type === 'llm.start') {
      const st = streamOf(d.request_id);
      st.li.querySelector('.sender').textContent = `assistant${d.model ? ` (${d.model})` : ''}`;
      askState(d.request_id, 'answering');
    } else if (d.type === 'llm.delta') {
      appendDelta(d);
    } else if (d.type === 'llm.error') {
      const st = llmStreams.get(d.request_id);
      const li = st ? st.li : addLine({ sender: 'assistant', text: '', cls: 'assistant' });
      finishStream(d.request_id);
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

  // ---- the assistant's answers

  // The answer of request id being streamed: a placeholder line that grows delta by delta.
  // Deltas carry an index; they are applied in index order, whatever order they come in.
  function streamOf(id) {
    let st = llmStreams.get(id);
    if (!st) {
      const li = addLine({ sender: 'assistant', text: '…', cls: 'assistant' });
      li.dataset.requestId = id;
      li.dataset.state = 'streaming';
      li.dataset.deltas = '0';
      st = { li, next: 0, early: new Map() };
      llmStreams.set(id, st);
    }
    return st;
  }

  function appendDelta(d) {
    const fresh = !llmStreams.has(d.request_id);
    const st = streamOf(d.request_id);
    if (fresh) {
      st.next = d.index; // joined mid-answer: the earlier text arrives with the stored message
    }
    if (d.index < st.next) {
      return; // already applied
    }
    st.early.set(d.index, d.text);
    const tx = st.li.querySelector('.text');
    while (st.early.has(st.next)) {
      tx.textContent = (tx.textContent === '…' ? '' : tx.textContent) + st.early.get(st.next);
      st.early.delete(st.next);
      st.next++;
      st.li.dataset.deltas = String(Number(st.li.dataset.deltas) + 1);
    }
    const list = $('messages');
    if (list.scrollTop + list.clientHeight >= list.scrollHeight - 60) {
      list.scrollTop = list.scrollHeight;
    }
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

  function addMark(li, text) {
    const m = document.createElement('span');
    m.className = 'mark';
    m.dataset.testid = 'message-mark';
    m.textContent = text;
    li.append(m);
  }

  // "retry_after_ms=N" in an error message, as a human wait; the rest of the message as is.
  function describeError(e) {
    const msg = String(e.message || '');
    const m = /retry_after_ms=(\d+)/.exec(msg);
    const text = msg.replace(/:?\s*retry_after_ms=\d+/, '').replace(/\s*plan=\S+/, '').trim() || `error ${e.code}`;
    return m ? `${text} (${e.code}), try again in ${humanWait(Number(m[1]))}` : `${text} (${e.code})`;
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

  // ---- this user's questions: queue position, answering, Stop

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
      stop.disabled = true;
      client.rpc('llm.cancel', { request_id: id }).catch((e) => {
        stop.disabled = false;
        showError(`cancel: ${e.message} (${e.code})`);
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

  async function ask(prompt) {
    if (!client || !sub) {
      return false;
    }
    showError('');
    try {
      const res = await client.rpc('llm.ask', { channel: room, prompt });
      const { request_id: id, queue_position: position } = res.data;
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
    try {
      await sub.publish({ type: 'message', text: `${ASK_PREFIX}${prompt}`, client_msg_id: uuid() });
    } catch (e) {
      showError(`question not shown in the room: ${describeError(e)}`);
    }
    return true;
  }

  function renderPresence() {
    const users = [...new Set(online.values())].sort();
    const ul = $('presence');
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

  // ---- room subscription

  // Offers older messages while the oldest shown one is not the room's first.
  function updateOlder(lastPage) {
    const oldest = Math.min(...seenOffsets);
    $('older').hidden = !(seenOffsets.size > 0 && oldest > 1 && lastPage.length === PAGE);
  }

  async function loadHistory() {
    try {
      // The newest page, shown oldest first.
      const h = await sub.history({ limit: PAGE, reverse: true });
      roomEpoch = h.epoch;
      for (const p of h.publications.slice().reverse()) {
        renderPublication(p); // already shown ones are skipped by offset
      }
      $('messages').scrollTop = $('messages').scrollHeight;
      updateOlder(h.publications);
    } catch (e) {
      showError(`history: ${e.message || e.code}`);
    }
  }

  // One page further back, before the oldest shown message; with a database behind the server
  // this reaches past the server's in-memory window, as far back as it keeps.
  async function loadOlder() {
    const list = $('messages');
    const before = list.scrollHeight;
    $('older').disabled = true;
    try {
      const since = { offset: Math.min(...seenOffsets), epoch: roomEpoch };
      const h = await sub.history({ limit: PAGE, reverse: true, since });
      for (const p of h.publications) {
        renderPublication(p); // placed by offset, above what is shown
      }
      list.scrollTop += list.scrollHeight - before; // the reader stays where they were
      updateOlder(h.publications);
    } catch (e) {
      showError(`history: ${e.message || e.code}`);
    } finally {
      $('older').disabled = false;
    }
  }
  $('older').addEventListener('click', loadOlder);

  async function loadPresence() {
    try {
      const p = await sub.presence();
      online.clear();
      for (const [id, info] of Object.entries(p.clients)) {
        online.set(id, info.user);
      }
      renderPresence();
    } catch (e) {
      showError(`presence: ${e.message || e.code}`);
    }
  }

  function subscribeRoom() {
    sub = client.newSubscription(room, { joinLeave: true, recoverable: true, positioned: true });
    sub.on('subscribed', (ctx) => {
      if (!ctx.recovered) {
        // First subscribe, or recovery was not possible: reload from history.
        loadHistory();
      }
      loadPresence();
    });
    sub.on('publication', (pub) => renderPublication(pub, true));
    sub.on('join', (ctx) => {
      online.set(ctx.info.client, ctx.info.user);
      renderPresence();
    });
    sub.on('leave', (ctx) => {
      online.delete(ctx.info.client);
      renderPresence();
    });
    sub.on('unsubscribed', (ctx) => {
      if (ctx.code !== 0) {
        showError(`unsubscribed from ${room}: ${ctx.reason} (${ctx.code})`);
      }
    });
    sub.on('error', (ctx) => showError(`subscription: ${ctx.error.message} (${ctx.error.code})`));
    sub.subscribe();

    const typingChannel = `typing:${room.includes(':') ? room.slice(room.indexOf(':') + 1) : room}`;
    typingSub = client.newSubscription(typingChannel);
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
    typingSub.subscribe();
  }

  // ---- actions

  async function join(event) {
    event.preventDefault();
    me = $('name').value.trim();
    room = $('room').value.trim() || 'chat:lobby';
    if (!me) {
      return;
    }
    showError('');
    $('join').disabled = true;
    const urlToken = params.get('token');
    try {
      const options = { token: urlToken || (await fetchToken(me)) };
      if (!urlToken) {
        options.getToken = () => fetchToken(me); // refresh before expiry
      }
      client = new Centrifuge(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/connection/websocket`, options);
    } catch (e) {
      showError(`sign-in failed: ${e.message}`);
      $('join').disabled = false;
      return;
    }
    client.on('state', (ctx) => setState(ctx.newState));
    client.on('connected', () => showError(''));
    client.on('disconnected', (ctx) => showError(`disconnected: ${ctx.reason} (${ctx.code})`));
    client.on('error', (ctx) => {
      if (ctx.error && ctx.type !== 'transport') {
        showError(`${ctx.type}: ${ctx.error.message} (${ctx.error.code})`);
      }
    });
    client.on('publication', personalPublication);
    subscribeRoom();
    client.connect();
    $('join-form').hidden = true;
    $('chat').hidden = false;
    $('room-title').textContent = room;
    $('text').focus();
  }

  async function send(event) {
    event.preventDefault();
    const text = $('text').value.trim();
    if (!text || !sub) {
      return;
    }
    if (text.startsWith(ASK_PREFIX) && text.length > ASK_PREFIX.length) {
      $('text').value = '';
      if (!(await ask(text.slice(ASK_PREFIX.length).trim()))) {
        $('text').value = text; // keep it for another try
      }
      return;
    }
    const data = { type: 'message', text, client_msg_id: uuid() };
    $('text').value = '';
    try {
      await sub.publish(data);
      showError('');
    } catch (e) {
      $('text').value = text; // keep it for another try
      const wait = /retry_after_ms=(\d+)/.exec(e.message || '');
      showError(wait ? `slow down: try again in ${Math.ceil(Number(wait[1]) / 1000)} s` : `not sent: ${e.message} (${e.code})`);
    }
  }

  function typed() {
    const now = Date.now();
    if (!client || client.state !== 'connected' || now - lastTypingSent < TYPING_SEND_EVERY_MS) {
      return;
    }
    lastTypingSent = now;
    client.rpc('typing', { channel: room }).catch(() => {}); // best effort, rate-limited by the server
  }

  $('join-form').addEventListener('submit', join);
  $('composer').addEventListener('submit', send);
  $('ask').addEventListener('click', async () => {
    const prompt = $('text').value.trim().replace(/^\/ask\s+/, '');
    if (!prompt) {
      $('text').placeholder = 'Type a question for the assistant, then Ask';
      $('text').focus();
      return;
    }
    $('text').value = '';
    if (!(await ask(prompt))) {
      $('text').value = prompt;
    }
  });
  $('text').addEventListener('input', typed);
  setState('disconnected');
})();
