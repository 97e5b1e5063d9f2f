// A second gRPC client for weir's tests, on Node's @grpc/grpc-js (raw bytes messages; the
// server is grpc_server.py). One client (one HTTP/2 connection), grpc-js's own retries off.
//
//   node grpc_client.js TARGET AUTHORITY N
//     N unary calls, then one server-streaming call of 5 messages, each checked; prints
//     {"servers": {name: n}, "codes": {CODE: n}, "stream": messages received}

const grpc = require('@grpc/grpc-js');

const [target, authority, n] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const id = (b) => b;
const options = { 'grpc.enable_retries': 0 };
if (authority !== '-') options['grpc.default_authority'] = authority;
const client = new grpc.Client(target, grpc.credentials.createInsecure(), options);
const codeName = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function unary(i) {
  return new Promise((resolve) => {
    const msg = Buffer.from(`js${i}`);
    let server = null;
    const call = client.makeUnaryRequest('/weir.test.Echo/Unary', id, id, msg, new grpc.Metadata(),
      { deadline: Date.now() + 10000 }, (err, resp) => {
        if (err) resolve({ code: codeName[err.code], server });
        else resolve({ code: resp.equals(msg) ? 'OK' : 'MISMATCH', server });
      });
    call.on('metadata', (md) => { server = md.get('x-server')[0] || server; });
  });
}

function serverStream() {
  return new Promise((resolve) => {
    const got = [];
    const call = client.makeServerStreamRequest('/weir.test.Echo/ServerStream', id, id, Buffer.from([5]),
      new grpc.Metadata(), { deadline: Date.now() + 10000 });
    call.on('data', (d) => got.push(d));
    call.on('error', () => resolve(-1));
    call.on('end', () => resolve(got.every((d, i) => d.length === 2 && d[0] === 5 && d[1] === i) ? got.length : -1));
  });
}

(async () => {
  const servers = {};
  const codes = {};
  for (let i = 0; i < n; i++) {
    const r = await unary(i);
    codes[r.code] = (codes[r.code] || 0) + 1;
    if (r.server) servers[r.server] = (servers[r.server] || 0) + 1;
  }
  const stream = await serverStream();
  console.log(JSON.stringify({ servers, codes, stream }));
  client.close();
})();
