// chatd web demo: plain script, no build step. Uses the centrifuge-js bundle (global Centrifuge).
// URL parameters: ?token=JWT (skip /demo/token), ?user=NAME and ?room=chat:NAME (pre-fill).
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
  const online = new Map(); // client id -> user
  const typing = new Map(); // user -> timer
  const llmStreams = new Map(); // request_id -> <li>
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
      const streaming = llmStreams.get(d.request_id);
      if (streaming) {
        streaming.remove();
        llmStreams.delete(d.request_id);
      }
      addLine({ sender: `assistant${d.model ? ` (${d.model})` : ''}`, text: d.text, cls: 'assistant', offset: pub.offset });
    } else if (d.type === 'message') {
      addLine({ sender: user, text: d.text, mine: user === me, offset: pub.offset, time });
    } else if (d.type === 'llm.start') {
      llmStreams.set(d.request_id, addLine({ sender: 'assistant', text: '…', cls: 'assistant' }));
    } else if (d.type === 'llm.delta') {
      const li = llmStreams.get(d.request_id);
      if (li) {
        const tx = li.querySelector('.text');
        tx.textContent = (tx.textContent === '…' ? '' : tx.textContent) + d.text;
      }
    } else if (d.type === 'llm.error') {
      llmStreams.delete(d.request_id);
      systemLine(`assistant error: ${d.message || d.code}`);
    }
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

  async function loadHistory() {
    try {
      // The newest 50, shown oldest first.
      const h = await sub.history({ limit: 50, reverse: true });
      for (const p of h.publications.slice().reverse()) {
        renderPublication(p); // already shown ones are skipped by offset
      }
      $('messages').scrollTop = $('messages').scrollHeight;
    } catch (e) {
      showError(`history: ${e.message || e.code}`);
    }
  }

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
  $('text').addEventListener('input', typed);
  setState('disconnected');
})();
