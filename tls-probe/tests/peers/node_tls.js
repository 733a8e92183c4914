// A node https server and client (node's own OpenSSL, over memory BIOs), printing the socket
// fds they use as the programs themselves see them.
//
// node_tls.js server CERT KEY [DELAY_MS]
//   Prints "READY {port, pid}", then "CONN {fd, peer, resumed}" for each TLS connection
//   (from its 'secureConnection' callback, which node runs inside the handshake: the line is
//   written to stdout inside OpenSSL's state machine). Answers each request with its path,
//   after DELAY_MS (0 by default).
// node_tls.js client PORT CONNS ROUNDS
//   Prints "WAITING {pid}", waits for a line on stdin, then opens CONNS keep-alive
//   connections at once; connection i sends ROUNDS requests for the path "/" + "x" * i, one
//   after another. Prints "CONN {i, fd, local, peer}" once each is connected, then "DONE".
// node_tls.js fresh PORT COUNT
//   COUNT requests one after another, each on a new connection, the TLS session of the last
//   offered for resumption. Prints "DONE {resumed}".
'use strict';
const https = require('https');
const fs = require('fs');
const readline = require('readline');

const say = (tag, obj) => process.stdout.write(`${tag} ${JSON.stringify(obj)}\n`);
const [mode, ...args] = process.argv.slice(2);

function get(agent, port, path) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path, agent, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      const socket = res.socket;
      res.on('end', () => resolve({ body, socket }));
    });
    req.on('error', reject);
  });
}

if (mode === 'server') {
  const [cert, key, delay] = args;
  const server = https.createServer(
    { key: fs.readFileSync(key), cert: fs.readFileSync(cert) },
    (req, res) => setTimeout(() => res.end(req.url), Number(delay || 0)),
  );
  server.on('secureConnection', (sock) => {
    say('CONN', {
      fd: sock._handle.fd,
      peer: `${sock.remoteAddress}:${sock.remotePort}`,
      resumed: sock.isSessionReused(),
    });
  });
  server.listen(0, '127.0.0.1', () => say('READY', { port: server.address().port, pid: process.pid }));
} else if (mode === 'client') {
  const [port, conns, rounds] = args.map(Number);
  say('WAITING', { pid: process.pid });
  readline.createInterface({ input: process.stdin }).once('line', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: conns });
    await Promise.all([...Array(conns).keys()].map(async (i) => {
      const path = '/' + 'x'.repeat(i);
      for (let r = 0; r < rounds; r++) {
        const { body, socket } = await get(agent, port, path);
        if (body !== path) throw new Error(`connection ${i}: got ${body}`);
        if (r === 0) {
          // Still connected: the agent keeps it for the next request.
          say('CONN', {
            i,
            fd: socket._handle.fd,
            local: `${socket.localAddress}:${socket.localPort}`,
            peer: `${socket.remoteAddress}:${socket.remotePort}`,
          });
        }
      }
    }));
    agent.destroy();
    say('DONE', { pid: process.pid });
    process.exit(0);
  });
} else if (mode === 'fresh') {
  const [port, count] = args.map(Number);
  (async () => {
    let resumed = 0;
    const agent = new https.Agent({ keepAlive: false, maxCachedSessions: 10 });
    for (let n = 0; n < count; n++) {
      const { socket } = await get(agent, port, '/');
      if (socket.isSessionReused()) resumed++;
    }
    say('DONE', { resumed });
  })();
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
