// A Node.js chat server on `ws` (the most used WebSocket library for Node), written the way its
// README's broadcast example shows: a Set of sockets per room, and a room message encoded once
// (JSON.stringify) and handed to `send` for every member whose socket is open.
//
// It speaks the subset of `iocp serve chat`'s JSON protocol that `iocp bench chat` uses, like
// bench/peers/src/bin/tokio-chat.rs: every connection gets `welcome` and starts in `lobby`;
// {"type":"join","room":R} answers `joined`, {"type":"leave","room":R} answers `left`,
// {"type":"msg","room":R,"text":T} sends {"type":"msg","room","from","text","ts"} to every
// member of R (the sender too). No presence events, history, nicknames or rate limits.
// A member whose socket holds more than SLOW_BYTES unsent skips messages until it drains
// (`bufferedAmount`), like tokio-chat's lagging receivers and `iocp serve chat --slow skip`.
// ws sets TCP_NODELAY on every socket itself.
//
// Node runs JavaScript on one thread: one process is how a single-machine ws chat is deployed
// (rooms live in its memory; several processes would need a broker between them). `--threads`
// is accepted and ignored.
//
//   node server.js [--addr 127.0.0.1:8090] [--threads N]
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const SLOW_BYTES = 1 << 20;

let addr = '127.0.0.1:8090';
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--addr' && i + 1 < process.argv.length) addr = process.argv[++i];
  else if (a === '--threads' && i + 1 < process.argv.length) i++;
  else {
    console.error(`node-chat: unknown argument ${a}`);
    process.exit(2);
  }
}
const colon = addr.lastIndexOf(':');
const host = addr.slice(0, colon).replace(/^\[|\]$/g, '');
const port = Number(addr.slice(colon + 1));

const rooms = new Map(); // name -> Set of sockets
let guests = 1;

function members(name) {
  let set = rooms.get(name);
  if (!set) {
    set = new Set();
    rooms.set(name, set);
  }
  return set;
}

function roomName(r) {
  return typeof r === 'string' ? r.replace(/^#+/, '').toLowerCase() : null;
}

const wss = new WebSocketServer({ host, port, maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
  const nick = `guest${guests++}`;
  const joined = new Set(['lobby']);
  members('lobby').add(ws);
  const reply = (v) => ws.send(JSON.stringify(v));
  const error = (code, message) => reply({ type: 'error', code, message });
  reply({ type: 'welcome', nick });

  ws.on('message', (data, isBinary) => {
    if (isBinary) return error('bad_command', 'text frames only');
    let v;
    try {
      v = JSON.parse(data.toString());
    } catch {
      return error('bad_json', 'not JSON');
    }
    const room = roomName(v && v.room);
    switch (v && v.type) {
      case 'join':
        if (room === null) return;
        joined.add(room);
        members(room).add(ws);
        return reply({ type: 'joined', room, members: [] });
      case 'leave':
        if (room === null) return;
        joined.delete(room);
        members(room).delete(ws);
        return reply({ type: 'left', room });
      case 'msg':
      case 'say': {
        if (room === null || typeof v.text !== 'string')
          return error('bad_command', 'msg needs room and text');
        if (!joined.has(room)) return error('not_in_room', 'join the room first');
        const out = JSON.stringify({ type: 'msg', room, from: nick, text: v.text, ts: Date.now() });
        for (const m of members(room)) {
          if (m.readyState === WebSocket.OPEN && m.bufferedAmount <= SLOW_BYTES) m.send(out);
        }
        return;
      }
      default:
        return error('bad_command', 'unknown command');
    }
  });

  ws.on('close', () => {
    for (const r of joined) {
      const set = rooms.get(r);
      if (set) {
        set.delete(ws);
        if (set.size === 0) rooms.delete(r);
      }
    }
  });
  ws.on('error', () => {});
});

wss.on('listening', () => console.error(`node-chat: listening on ${addr} (ws ${require('ws/package.json').version})`));
wss.on('error', (e) => {
  console.error(`node-chat: ${e.message}`);
  process.exit(1);
});
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(0));
