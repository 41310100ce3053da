'use strict';
/**
 * The wire and spool encodings (docs/protocol.md): a frame is a 4-byte
 * big-endian length and a MessagePack map; a spool record is a 4-byte
 * big-endian length, the 4-byte big-endian CRC-32 (zlib's) of the payload,
 * and the payload.  Replies are decoded incrementally from a byte stream.
 */

const zlib = require('node:zlib');
const { Encoder, decode } = require('@msgpack/msgpack');

const MAX_FRAME = 1 << 20;
const SPOOL_MAGIC = Buffer.from('RLSPOOL1', 'latin1');

// undefined fields are left out (optional = absent).  Not useBigInt64: with it
// the encoder writes integers past 2^32 (every `ts`) as floats.
const encoder = new Encoder({ ignoreUndefined: true });

let CRC_TABLE;
/** CRC-32/ISO-HDLC (zlib, PNG): `zlib.crc32` where Node has it (>= 20.15), else a table. */
const crc32 =
  typeof zlib.crc32 === 'function'
    ? (data) => zlib.crc32(data)
    : (data) => {
        if (!CRC_TABLE) {
          CRC_TABLE = new Uint32Array(256);
          for (let n = 0; n < 256; n++) {
            let c = n;
            for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
            CRC_TABLE[n] = c >>> 0;
          }
        }
        let c = 0xffffffff;
        for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
        return (c ^ 0xffffffff) >>> 0;
      };

/**
 * The spool record of one message (a Buffer of its own: length, CRC, payload).
 * Throws RangeError when the payload is over 1 MiB.
 */
function encodeRecord(message) {
  const payload = encoder.encodeSharedRef(message);
  const n = payload.length;
  if (n < 1 || n > MAX_FRAME) throw new RangeError(`a ${n}-byte event is over the 1 MiB frame limit`);
  const record = Buffer.allocUnsafe(8 + n);
  record.writeUInt32BE(n, 0);
  record.writeUInt32BE(crc32(payload), 4);
  record.set(payload, 8);
  return record;
}

/** The socket frame of a spool record (the same payload behind a 4-byte length). */
function frameOf(record) {
  const frame = Buffer.allocUnsafe(record.length - 4);
  record.copy(frame, 0, 0, 4);
  record.copy(frame, 4, 8);
  return frame;
}

/** `{record, frame}` for one message (tests, tools); see encodeRecord. */
function encodeEvent(message) {
  const record = encodeRecord(message);
  return { record, frame: frameOf(record) };
}

/** The size of a value once encoded (bytes); throws what encoding throws. */
function encodedSize(value) {
  return encoder.encodeSharedRef(value).length;
}

/** The frame of a record read back from a spool file. */
function frameOfRecord(payload) {
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, 4);
  return frame;
}

/**
 * The complete, intact records of spool bytes (the file from its header on,
 * or, with `header` false, bytes starting at a record): payload Buffers in
 * order, stopping at a torn or corrupt one.
 */
function readRecords(data, header = true) {
  const out = [];
  let at = 0;
  if (header) {
    if (data.length < 8 || !data.subarray(0, 8).equals(SPOOL_MAGIC)) return out;
    at = 8;
  }
  while (at + 8 <= data.length) {
    const n = data.readUInt32BE(at);
    if (n < 1 || n > MAX_FRAME || at + 8 + n > data.length) break;
    const payload = data.subarray(at + 8, at + 8 + n);
    if (crc32(payload) !== data.readUInt32BE(at + 4)) break;
    out.push(payload);
    at += 8 + n;
  }
  return out;
}

/** Incremental reply decoder: `push(bytes)`, then `next()` until it returns undefined. */
class ReplyDecoder {
  constructor() {
    this.buffer = Buffer.alloc(0);
  }

  push(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
  }

  /** The next reply map; undefined when incomplete.  Throws on a bad length or body. */
  next() {
    const buf = this.buffer;
    if (buf.length < 4) return undefined;
    const n = buf.readUInt32BE(0);
    if (n < 1 || n > MAX_FRAME) throw new RangeError(`reply frame length ${n}`);
    if (buf.length < 4 + n) return undefined;
    const body = buf.subarray(4, 4 + n);
    this.buffer = buf.subarray(4 + n);
    return decode(body);
  }
}

module.exports = {
  MAX_FRAME,
  SPOOL_MAGIC,
  ReplyDecoder,
  crc32,
  encodeEvent,
  encodeRecord,
  encodedSize,
  frameOf,
  frameOfRecord,
  readRecords,
};
