// @tus/server with @tus/file-store on 127.0.0.1: a real third-party tus peer for tests and
// benchmarks.  node tus_server.mjs FILES_DIR [PORT]
// Prints "listening on http://127.0.0.1:PORT/files/" once bound (port 0 picks a free one).
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [directory, port = '0'] = process.argv.slice(2)
if (!directory) {
  console.error('usage: node tus_server.mjs FILES_DIR [PORT]')
  process.exit(2)
}
const server = new Server({ path: '/files', datastore: new FileStore({ directory }) })
const http = server.listen({ host: '127.0.0.1', port: Number(port) }, () => {
  console.log(`listening on http://127.0.0.1:${http.address().port}/files/`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => http.close(() => process.exit(0)))
}
