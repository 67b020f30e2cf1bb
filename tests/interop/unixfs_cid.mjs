// Independent reference for agent/store/cid.py. Usage:
//   node unixfs_cid.mjs [--chunk-size N] [--max-links N] FILE...
// For each FILE, prints "<root CID> <distinct blocks>" as the npm UnixFS importer computes them
// with kubo's `ipfs add --cid-version=1` settings: raw leaves, fixed-size chunks (default
// 262144 bytes), balanced layout with at most 174 links per node (default), sha2-256.
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { importBytes } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'chunk-size': { type: 'string', default: '262144' },
    'max-links': { type: 'string', default: '174' }
  }
})

const options = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: Number(values['chunk-size']) }),
  layout: balanced({ maxChildrenPerNode: Number(values['max-links']) })
}

for (const path of positionals) {
  // The importer only needs put(); keep the CIDs, not the blocks, so big files stay cheap.
  const seen = new Set()
  const blockstore = { put: async (cid) => { seen.add(cid.toString()); return cid } }
  const entry = await importBytes(await readFile(path), blockstore, options)
  console.log(`${entry.cid.toString()} ${seen.size}`)
}
