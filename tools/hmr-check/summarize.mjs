// Prints the human summary of result.json (written by drive.mjs).
import { readFileSync } from 'node:fs';
const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const ws = r.websockets.map((w) => `${w.url} (frames in ${w.framesIn}, out ${w.framesOut}, updates ${w.updateFrames}, full-reloads ${w.fullReloadFrames}` +
  `${w.closed ? ', closed ' + w.closed : ''}${w.error ? ', error ' + w.error : ''})`);
const hot = !(r.reloadAfterEdit || !r.markerSurvived);
console.log(`browser reports: ${r.browserVersion}`);
console.log(`websockets opened by the page: ${ws.join('; ') || 'none'}`);
console.log(`update frame arrived on: ${r.updateSocket || '-'}; paths: ${JSON.stringify(r.updatePayload?.updates?.map((u) => `${u.path} (${u.type})`) ?? null)}`);
console.log(`edit -> ws update frame: ${r.editToUpdateFrameMs ?? '-'} ms; edit -> DOM shows "version 2": ${r.editToDomMs ?? '-'} ms`);
console.log(`main-frame navigation after edit: ${r.reloadAfterEdit}; window marker survived: ${r.markerSurvived} => ${r.editToDomMs == null ? 'NO UPDATE' : hot ? 'HOT UPDATE' : 'FULL RELOAD'}`);
console.log(`text before: ${JSON.stringify(r.textBefore)}; after: ${JSON.stringify(r.textAfter)}`);
console.log(`page HTTP requests by host: ${JSON.stringify(r.requestHosts)}`);
console.log(`responses >= 400: ${JSON.stringify(r.badResponses)}; failed requests: ${JSON.stringify(r.failedRequests)}`);
console.log(`browser console: ${JSON.stringify(r.console)}`);
console.log(`${r.pass ? 'PASS' : 'FAIL'}: ${r.reason}`);
