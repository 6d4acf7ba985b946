// tus-js-client in Node: upload one file to a tus server, as browsers and Node programs do.
//   node tus_upload.mjs FILE ENDPOINT [--chunk-size BYTES] [--parallel N] [--url-store PATH]
//                                     [--metadata JSON]
// With --url-store the upload URL is kept in a file (tus-js-client's FileUrlStorage), so a run
// killed with SIGKILL and started again resumes the same upload.
// stdout: one JSON line per accepted chunk {"progress": bytes, "total": bytes}, then
// {"done": true, "url": ..., "bytes": ..., "seconds": ..., "resumed": bool}. Errors: stderr, exit 1.
import * as fs from 'node:fs'
import { Upload, FileUrlStorage } from 'tus-js-client'

const argv = process.argv.slice(2)
const [file, endpoint] = argv
if (!file || !endpoint) {
  console.error('usage: node tus_upload.mjs FILE ENDPOINT [--chunk-size N] [--parallel N] [--url-store PATH]')
  process.exit(2)
}
const flag = (name) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : undefined
}
const size = fs.statSync(file).size
const options = {
  endpoint,
  uploadSize: size,
  retryDelays: [0, 500, 1000, 2000],
  metadata: { filename: file.split('/').pop(), filetype: 'application/octet-stream', ...JSON.parse(flag('--metadata') || '{}') },
  onChunkComplete: (_chunk, accepted, total) => {
    process.stdout.write(JSON.stringify({ progress: accepted, total }) + '\n')
  },
}
if (flag('--chunk-size')) options.chunkSize = Number(flag('--chunk-size'))
if (flag('--parallel')) {
  options.parallelUploads = Number(flag('--parallel'))
  delete options.uploadSize // tus-js-client takes the size from the file itself then
}
if (flag('--url-store')) {
  options.urlStorage = new FileUrlStorage(flag('--url-store'))
  options.storeFingerprintForResuming = true
  options.removeFingerprintOnSuccess = true
}

const started = performance.now()
let resumed = false
await new Promise((resolve, reject) => {
  const upload = new Upload(fs.createReadStream(file), {
    ...options,
    onError: reject,
    onSuccess: () => resolve(upload),
  })
  const go = async () => {
    if (options.urlStorage) {
      const previous = await upload.findPreviousUploads()
      if (previous.length > 0) {
        resumed = true
        upload.resumeFromPreviousUpload(previous[0])
      }
    }
    upload.start()
  }
  go().catch(reject)
}).then(
  (upload) => {
    const seconds = (performance.now() - started) / 1000
    process.stdout.write(JSON.stringify({ done: true, url: upload.url, bytes: size, seconds, resumed }) + '\n')
  },
  (error) => {
    console.error(`tus-js-client: ${error}`)
    process.exit(1)
  },
)
