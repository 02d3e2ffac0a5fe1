/**
 * Parsing of dial addresses ("host:port", "[v6]:port"), pure.
 */
import { ErrorCode, KnatsError } from './errors.js';

export interface DialAddress {
  readonly host: string;
  readonly port: number;
}

export function parseDialAddress(address: string): DialAddress {
  const bad = (why: string) =>
    new KnatsError(ErrorCode.BadAddress, `bad address ${JSON.stringify(address)}: ${why}`);
  if (address.length > 1024) throw bad('too long');
  let host: string;
  let portText: string;
  if (address.startsWith('[')) {
    const end = address.indexOf(']');
    if (end < 0 || address[end + 1] !== ':') throw bad('expected [ipv6]:port');
    host = address.slice(1, end);
    portText = address.slice(end + 2);
  } else {
    const colon = address.lastIndexOf(':');
    if (colon < 0) throw bad('missing port');
    host = address.slice(0, colon);
    portText = address.slice(colon + 1);
    if (host.includes(':')) throw bad('IPv6 addresses need brackets: [addr]:port');
  }
  if (host.length === 0) throw bad('empty host');
  if (!/^[0-9]{1,5}$/.test(portText)) throw bad('port must be a number');
  const port = Number(portText);
  if (port < 1 || port > 65535) throw bad('port out of range 1-65535');
  if (/[\s/?#@]/.test(host)) throw bad('invalid character in host');
  return { host, port };
}
