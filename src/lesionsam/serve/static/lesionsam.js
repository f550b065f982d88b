// The lesionsam page: NiiVue (vendored, ./vendor/niivue) + the lesionsam HTTP API (nothing else).
//
// Coordinates: the API takes voxel indices (i, j, k) of the opened image in ITK order (= NIfTI's i, j, k). NiiVue
// reports positions in RAS millimetres (and voxel indices of its own RAS-reoriented copy, which are NOT the file's
// indices for an image stored in another orientation): the page converts NiiVue's millimetres to the file's (i, j, k)
// with the inverse of the session's ijk_to_ras affine, which is exact for every orientation.
import { Niivue, NVImage, SLICE_TYPE, DRAG_MODE, MULTIPLANAR_TYPE, SHOW_RENDER } from './vendor/niivue/index.js'

const $ = (id) => document.getElementById(id)
const state = {
  sid: null, name: '', size: null, rasFromIjk: null, ijkFromRas: null,
  lesions: [], active: null, tool: 'click', negative: false, busy: false,
  image: null, labels: null, lastClick: null, lastBox: null, interactions: 0,
  proposalKinds: [], proposals: [], proposalsVol: null,
}
const PROPOSAL_COLOUR = [0, 229, 255]

// ------------------------------------------------------------------------------------------------ API
async function api (method, url, body) {
  const init = { method, headers: {} }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const r = await fetch(url, init)
  if (!r.ok) {
    let message = r.statusText
    try { message = (await r.json()).detail } catch (e) { /* not JSON */ }
    const err = new Error(message)
    err.status = r.status
    throw err
  }
  return r.status === 204 ? null : r.json()
}

async function bytes (url) {
  const r = await fetch(url)
  if (!r.ok) {
    let message = r.statusText
    try { message = (await r.json()).detail } catch (e) { /* not JSON */ }
    throw new Error(message)
  }
  return r.arrayBuffer()
}

function status (text, isError = false) {
  $('status').textContent = text
  $('status').classList.toggle('error', isError)
}

async function busy (label, work) {
  if (state.busy) return null
  state.busy = true
  document.body.style.cursor = 'progress'
  const t0 = performance.now()
  status(label + '…')
  try {
    const out = await work()
    status(`${label}: ${((performance.now() - t0) / 1000).toFixed(2)} s`)
    return out
  } catch (err) {
    status(err.message, true)
    return null
  } finally {
    state.busy = false
    document.body.style.cursor = ''
    refreshButtons()
  }
}

// ------------------------------------------------------------------------------------------------ geometry
function invert4 (m) {
  // inverse of an affine 4x4 (rows), via the 3x3 linear part
  const [a, b, c] = [m[0], m[1], m[2]]
  const A = [[a[0], a[1], a[2]], [b[0], b[1], b[2]], [c[0], c[1], c[2]]]
  const det = A[0][0] * (A[1][1] * A[2][2] - A[1][2] * A[2][1]) - A[0][1] * (A[1][0] * A[2][2] - A[1][2] * A[2][0]) +
    A[0][2] * (A[1][0] * A[2][1] - A[1][1] * A[2][0])
  const inv = [
    [(A[1][1] * A[2][2] - A[1][2] * A[2][1]) / det, (A[0][2] * A[2][1] - A[0][1] * A[2][2]) / det, (A[0][1] * A[1][2] - A[0][2] * A[1][1]) / det],
    [(A[1][2] * A[2][0] - A[1][0] * A[2][2]) / det, (A[0][0] * A[2][2] - A[0][2] * A[2][0]) / det, (A[0][2] * A[1][0] - A[0][0] * A[1][2]) / det],
    [(A[1][0] * A[2][1] - A[1][1] * A[2][0]) / det, (A[0][1] * A[2][0] - A[0][0] * A[2][1]) / det, (A[0][0] * A[1][1] - A[0][1] * A[1][0]) / det],
  ]
  const t = [a[3], b[3], c[3]]
  return inv.map((row) => [...row, -(row[0] * t[0] + row[1] * t[1] + row[2] * t[2])]).concat([[0, 0, 0, 1]])
}

function apply4 (m, p) {
  return [0, 1, 2].map((r) => m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
}

/** RAS mm → the file's voxel index (i, j, k), rounded; null outside the image. */
function mmToIjk (mm) {
  const ijk = apply4(state.ijkFromRas, mm).map(Math.round)
  return ijk.every((v, a) => v >= 0 && v < state.size[a]) ? ijk : null
}

/** A pointer event's position in canvas pixels (NiiVue's units). */
function canvasXY (event) {
  const canvas = $('viewer')
  const rect = canvas.getBoundingClientRect()
  const scale = canvas.width / rect.width
  return [(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale]
}

/** The file voxel under canvas position xy on a 2D slice tile, or null (3D view, outside the image). */
function voxelAt (xy) {
  const tile = nv.tileIndex(xy[0], xy[1])
  if (tile < 0 || nv.screenSlices[tile].axCorSag > SLICE_TYPE.SAGITTAL) return null
  const frac = nv.canvasPos2frac(xy)
  if (frac[0] < 0) return null
  return { ijk: mmToIjk(nv.frac2mm(frac, 0, true)), tile }
}

// ------------------------------------------------------------------------------------------------ viewer
const nv = new Niivue({
  backColor: [0.08, 0.08, 0.1, 1],
  show3Dcrosshair: true,
  crosshairColor: [1, 1, 0, 0.5],
  crosshairWidth: 0.5,
  multiplanarLayout: MULTIPLANAR_TYPE.GRID,
  multiplanarShowRender: SHOW_RENDER.ALWAYS,
  dragModePrimary: DRAG_MODE.crosshair,
  dragMode: DRAG_MODE.contrast,
  isColorbar: false,
  logLevel: 'warn',
})

function labelColormap () {
  const maxId = Math.max(1, ...state.lesions.map((l) => l.id), maxLabelValue())
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [''] }
  const colours = new Map(state.lesions.map((l) => [l.id, l.colour]))
  for (let id = 1; id <= maxId; id++) {
    const hex = colours.get(id) || '#ffffff'
    cm.R.push(parseInt(hex.slice(1, 3), 16))
    cm.G.push(parseInt(hex.slice(3, 5), 16))
    cm.B.push(parseInt(hex.slice(5, 7), 16))
    cm.A.push(255)
    cm.I.push(id)
    cm.labels.push(`lesion ${id}`)
  }
  return cm
}

function maxLabelValue () {
  if (!state.labels) return 0
  let m = 0
  for (const v of state.labels.img) if (v > m) m = v
  return m
}

function recolour () {
  if (!state.labels) return
  state.labels.setColormapLabel(labelColormap())
  nv.updateGLVolume()
}

async function loadLabels () {
  const buf = await bytes(`/api/sessions/${state.sid}/labels`)
  const vol = await NVImage.loadFromUrl({ url: buf, name: 'labels.nii', opacity: Number($('opacity').value) })
  if (state.labels) nv.removeVolume(state.labels)
  state.labels = vol
  nv.addVolume(vol)
  recolour()
}

/** The uint16 label values of an update: base64 → zlib (deflate, RFC 1950) → little-endian uint16. */
async function patchValues (update) {
  const raw = atob(update.labels)
  const packed = new Uint8Array(raw.length)
  for (let n = 0; n < raw.length; n++) packed[n] = raw.charCodeAt(n)
  const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream('deflate'))
  return new Uint16Array(await new Response(stream).arrayBuffer()) // little-endian, like every browser platform
}

/** Write an interaction's label patch into the overlay (only the region that changed). */
async function applyUpdate (update) {
  state.lesions = update.lesions
  const [i0, j0, k0] = update.region.start
  const [ni, nj, nk] = update.region.size
  if (ni * nj * nk > 0) {
    const patch = await patchValues(update)
    const img = state.labels.img
    const [NI, NJ] = [state.labels.hdr.dims[1], state.labels.hdr.dims[2]]
    let p = 0
    for (let k = 0; k < nk; k++) {
      for (let j = 0; j < nj; j++) {
        img.set(patch.subarray(p, p + ni), (k0 + k) * NI * NJ + (j0 + j) * NI + i0)
        p += ni
      }
    }
  }
  state.interactions++
  recolour()
  renderLesions()
}

// ------------------------------------------------------------------------------------------------ lesions UI
function renderLesions () {
  if (state.active !== null && !state.lesions.some((l) => l.id === state.active)) state.active = null
  const ul = $('lesions')
  ul.replaceChildren()
  for (const l of state.lesions) {
    const li = document.createElement('li')
    li.dataset.id = l.id
    li.classList.toggle('active', l.id === state.active)
    const sw = document.createElement('span')
    sw.className = 'swatch'
    sw.style.background = l.colour
    const name = document.createElement('span')
    name.textContent = `Lesion ${l.id}`
    const vol = document.createElement('span')
    vol.className = 'vol'
    vol.textContent = `${l.volume_ml.toFixed(2)} mL`
    const del = document.createElement('button')
    del.textContent = '×'
    del.title = 'delete this lesion'
    del.addEventListener('click', (e) => { e.stopPropagation(); deleteLesion(l.id) })
    li.append(sw, name, vol, del)
    li.addEventListener('click', () => { state.active = l.id; renderLesions(); refreshButtons() })
    ul.append(li)
  }
  refreshButtons()
}

function refreshButtons () {
  const open = state.sid !== null
  $('undo').disabled = !open || state.active === null
  $('redo').disabled = !open || state.active === null
  $('save').disabled = !open
  $('propose').disabled = !open
  $('open').disabled = !$('images').value
  $('tool-click').classList.toggle('on', state.tool === 'click')
  $('tool-box').classList.toggle('on', state.tool === 'box')
  $('negative').classList.toggle('on', state.negative)
  $('new-lesion').classList.toggle('on', open && state.active === null)
}

// ------------------------------------------------------------------------------------------------ actions
async function listImages () {
  const out = await api('GET', '/api/images')
  const sel = $('images')
  sel.replaceChildren()
  for (const im of out.images) {
    const opt = document.createElement('option')
    opt.value = im.path
    opt.textContent = `${im.path}  (${(im.size_bytes / 1048576).toFixed(1)} MB)`
    sel.append(opt)
  }
  status(out.images.length ? 'Choose an image and press Open (or double-click it).' : 'No image in the served folder: upload one.')
  refreshButtons()
}

async function showSession (info) {
  if (state.sid) api('DELETE', `/api/sessions/${state.sid}`).catch(() => {})
  Object.assign(state, {
    sid: info.session, name: info.name, size: info.size, rasFromIjk: info.ijk_to_ras,
    ijkFromRas: invert4(info.ijk_to_ras), lesions: info.lesions, active: null, interactions: 0,
  })
  const buf = await bytes(`/api/sessions/${state.sid}/image`)
  const image = await NVImage.loadFromUrl({ url: buf, name: 'image.nii', colormap: 'gray' })
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0])
  state.labels = null
  state.proposalsVol = null
  state.proposals = []
  renderProposals()
  state.image = image
  nv.addVolume(image)
  await loadLabels()
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR)
  $('name').textContent = `${info.name}: ${info.size.join(' × ')} voxels, ${info.spacing.map((s) => s.toFixed(2)).join(' × ')} mm`
  $('download').href = `/api/sessions/${state.sid}/download?what=mask`
  $('download-prompts').href = `/api/sessions/${state.sid}/download?what=prompts`
  $('download').hidden = $('download-prompts').hidden = false
  renderLesions()
}

function openSelected () {
  const path = $('images').value
  if (path) busy(`Opening ${path}`, async () => showSession(await api('POST', '/api/sessions', { path })))
}

async function uploadFile (file) {
  await busy(`Uploading ${file.name}`, async () => {
    const r = await fetch(`/api/sessions/upload?filename=${encodeURIComponent(file.name)}`, {
      method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: file,
    })
    if (!r.ok) {
      let message = r.statusText
      try { message = (await r.json()).detail } catch (e) { /* not JSON */ }
      throw new Error(message)
    }
    await showSession(await r.json())
  })
}

async function click (ijk, positive) {
  state.lastClick = { ijk, positive }
  if (!positive && state.active === null) {
    status('A negative click removes from the selected lesion: select one in the list first.', true)
    return
  }
  const body = { point: ijk, positive, lesion: state.active }
  await interact(`${positive ? 'Positive' : 'Negative'} click at (${ijk.join(', ')})`,
    () => api('POST', `/api/sessions/${state.sid}/click`, body))
}

/** One interaction at a time: send it, then patch the overlay with its answer (before the next may start). */
function interact (label, request, { select = true } = {}) {
  return busy(label, async () => {
    const update = await request()
    if (select) state.active = update.lesion
    await applyUpdate(update)
    return update
  })
}

async function box (a, b) {
  const lo = [0, 1, 2].map((n) => Math.min(a[n], b[n]))
  const hi = [0, 1, 2].map((n) => Math.max(a[n], b[n]))
  state.lastBox = { lo, hi }
  await interact(`Box (${lo.join(', ')})–(${hi.join(', ')})`,
    () => api('POST', `/api/sessions/${state.sid}/box`, { lo, hi, lesion: state.active }))
}

async function history (kind) {
  if (state.active === null) return
  await interact(kind === 'undo' ? 'Undo' : 'Redo',
    () => api('POST', `/api/sessions/${state.sid}/lesions/${state.active}/${kind}`))
}

async function deleteLesion (id) {
  await interact(`Delete lesion ${id}`, () => api('DELETE', `/api/sessions/${state.sid}/lesions/${id}`),
    { select: false })
}

async function save () {
  await busy('Saving', async () => {
    let out
    try {
      out = await api('POST', `/api/sessions/${state.sid}/save`, { overwrite: false })
    } catch (err) {
      if (err.status !== 409 || !window.confirm(`${err.message}\nReplace it?`)) throw err
      out = await api('POST', `/api/sessions/${state.sid}/save`, { overwrite: true })
    }
    state.saved = out
    return out
  })
  if (state.saved) status(`Saved ${state.saved.mask}\nand ${state.saved.prompts}`)
}

// ------------------------------------------------------------------------------------------------ proposals
async function propose () {
  const body = state.proposalKinds.includes('auto') ? {} : { text: $('proposal-text').value.trim() }
  if (body.text === '') { status('Type what to look for (e.g. liver tumour).', true); return }
  const out = await busy('Finding lesions', () => api('POST', `/api/sessions/${state.sid}/proposals`, body))
  if (!out) return
  state.proposals = out.proposals.map((p) => ({ ...p, accepted: false }))
  const buf = await bytes(`/api/sessions/${state.sid}/proposals/labels`)
  const vol = await NVImage.loadFromUrl({ url: buf, name: 'proposals.nii', opacity: 0.35 })
  if (state.proposalsVol) nv.removeVolume(state.proposalsVol)
  state.proposalsVol = vol
  nv.addVolume(vol)
  nv.setVolume(vol, 1) // under the lesions
  const n = Math.max(1, state.proposals.length)
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [''] }
  for (let id = 1; id <= n; id++) {
    cm.R.push(PROPOSAL_COLOUR[0]); cm.G.push(PROPOSAL_COLOUR[1]); cm.B.push(PROPOSAL_COLOUR[2])
    cm.A.push(255); cm.I.push(id); cm.labels.push(`proposal ${id}`)
  }
  vol.setColormapLabel(cm)
  nv.updateGLVolume()
  renderProposals()
  status(`${state.proposals.length} proposal(s) in ${out.seconds.toFixed(1)} s`)
}

function renderProposals () {
  const ul = $('proposals')
  ul.replaceChildren()
  for (const p of state.proposals) {
    const li = document.createElement('li')
    const name = document.createElement('span')
    name.textContent = `Proposal ${p.id}`
    const vol = document.createElement('span')
    vol.className = 'vol'
    vol.textContent = `${p.volume_ml.toFixed(2)} mL`
    const show = document.createElement('button')
    show.textContent = 'show'
    show.addEventListener('click', () => showVoxel(p.lo.map((v, a) => Math.round((v + p.hi[a]) / 2))))
    const take = document.createElement('button')
    take.textContent = p.accepted ? 'accepted' : 'accept'
    take.disabled = p.accepted
    take.addEventListener('click', () => acceptProposal(p))
    li.append(name, vol, show, take)
    ul.append(li)
  }
}

async function acceptProposal (p) {
  const update = await interact(`Accept proposal ${p.id}`,
    () => api('POST', `/api/sessions/${state.sid}/proposals/${p.id}/accept`))
  if (!update) return
  p.accepted = true
  renderProposals()
}

// ------------------------------------------------------------------------------------------------ pointer
let down = null
function onPointerDown (e) {
  if (e.button !== 0 || !state.sid) return
  down = { xy: canvasXY(e), shift: e.shiftKey, hit: voxelAt(canvasXY(e)) }
}

function onPointerUp (e) {
  if (e.button !== 0 || !down || !state.sid) return
  const start = down
  down = null
  const xy = canvasXY(e)
  const moved = Math.hypot(xy[0] - start.xy[0], xy[1] - start.xy[1])
  if (state.tool === 'click' && moved < 5 && start.hit && start.hit.ijk) {
    click(start.hit.ijk, !(start.shift || state.negative))
  } else if (state.tool === 'box' && moved >= 5 && start.hit && start.hit.ijk) {
    const end = voxelAt(xy)
    if (end && end.ijk && end.tile === start.hit.tile) box(start.hit.ijk, end.ijk)
    else status('Draw the box inside one slice view.', true)
  }
}

function setTool (tool) {
  state.tool = tool
  nv.opts.dragModePrimary = tool === 'box' ? DRAG_MODE.callbackOnly : DRAG_MODE.crosshair
  refreshButtons()
}

// ------------------------------------------------------------------------------------------------ test hooks
/** The CSS pixel position (relative to the canvas) where voxel (i, j, k) is drawn on a slice view. */
function voxelToScreen (ijk, sliceType = SLICE_TYPE.AXIAL) {
  const frac = nv.mm2frac(apply4(state.rasFromIjk, ijk), 0, true)
  const hit = nv.frac2canvasPosWithTile(frac, sliceType)
  if (!hit) return null
  const canvas = $('viewer')
  const scale = canvas.width / canvas.getBoundingClientRect().width
  return { x: hit.pos[0] / scale, y: hit.pos[1] / scale, tile: hit.tileIndex }
}

/** Move the crosshair (and so the slices shown) to voxel (i, j, k). */
function showVoxel (ijk) {
  nv.scene.crosshairPos = nv.mm2frac(apply4(state.rasFromIjk, ijk), 0, true)
  nv.drawScene()
  nv.createOnLocationChange()
}

function overlayVoxels () {
  if (!state.labels) return 0
  let n = 0
  for (const v of state.labels.img) if (v > 0) n++
  return n
}

window.lesionsam = { nv, state, voxelToScreen, showVoxel, overlayVoxels, mmToIjk }

// ------------------------------------------------------------------------------------------------ start
async function main () {
  const canvas = $('viewer')
  await nv.attachToCanvas(canvas)
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR)
  canvas.addEventListener('pointerdown', onPointerDown, true)
  canvas.addEventListener('pointerup', onPointerUp, true)
  $('images').addEventListener('change', refreshButtons)
  $('images').addEventListener('dblclick', openSelected)
  $('open').addEventListener('click', openSelected)
  $('upload').addEventListener('change', (e) => { if (e.target.files.length) uploadFile(e.target.files[0]) })
  $('tool-click').addEventListener('click', () => setTool('click'))
  $('tool-box').addEventListener('click', () => setTool('box'))
  $('negative').addEventListener('click', () => { state.negative = !state.negative; refreshButtons() })
  $('new-lesion').addEventListener('click', () => { state.active = null; renderLesions() })
  $('undo').addEventListener('click', () => history('undo'))
  $('redo').addEventListener('click', () => history('redo'))
  $('save').addEventListener('click', save)
  $('opacity').addEventListener('input', (e) => {
    if (state.labels) { state.labels.opacity = Number(e.target.value); nv.updateGLVolume() }
  })
  window.addEventListener('beforeunload', () => {
    if (state.sid) navigator.sendBeacon && fetch(`/api/sessions/${state.sid}`, { method: 'DELETE', keepalive: true })
  })
  $('propose').addEventListener('click', propose)
  const info = await api('GET', '/api/info')
  state.proposalKinds = info.proposals
  $('proposals-section').hidden = info.proposals.length === 0
  $('proposal-text').hidden = !info.proposals.includes('text')
  await listImages()
  window.lesionsam.ready = true
}

main().catch((err) => status(`The viewer could not start: ${err.message}`, true))
