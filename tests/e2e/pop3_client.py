"""A scriptable POP3 client for the end-to-end suite, on Python's poplib and ssl.

usage: pop3_client.py HOST PORT MODE CAFILE [SNI] -- COMMAND...

MODE: plain (no TLS), tls (implicit TLS), stls (poplib's stls()), inject (sends "STLS" and the
first COMMAND in one write before the handshake, then the remaining commands over TLS).
Prints one JSON object: {"greeting", "cert_sha256", "replies": [[status, body-lines|null]...]}.
Multi-line replies are read for CAPA, LIST, UIDL, RETR n, TOP n m and LANG (no argument).
"""

import hashlib
import json
import os
import poplib
import socket
import ssl
import sys


def multi_line(cmd):
    words = cmd.split()
    kw = words[0].upper() if words else ""
    if kw in ("CAPA",):
        return True
    if kw in ("LIST", "UIDL", "LANG"):
        return len(words) == 1
    return kw in ("RETR", "TOP")


def context(cafile, sni):
    ctx = ssl.create_default_context(cafile=cafile)
    # POP3_MAX_TLS=1.2 makes the client offer nothing newer (to test a listener's minimum).
    if os.environ.get("POP3_MAX_TLS") == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(sni)
    if not sni:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def run(p, commands):
    replies = []
    for cmd in commands:
        try:
            if multi_line(cmd):
                resp, lines, _ = p._longcmd(cmd)
                replies.append([resp.decode("utf-8", "replace"), [l.decode("utf-8", "replace") for l in lines]])
            else:
                replies.append([p._shortcmd(cmd).decode("utf-8", "replace"), None])
        except poplib.error_proto as e:
            replies.append([e.args[0].decode("utf-8", "replace") if isinstance(e.args[0], bytes) else str(e.args[0]), None])
        except (EOFError, OSError, ConnectionError) as e:
            replies.append(["<closed: %s>" % type(e).__name__, None])
            break
    return replies


def fingerprint(sock):
    try:
        der = sock.getpeercert(binary_form=True)
    except (AttributeError, ValueError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    host, port, mode, cafile = args[0], int(args[1]), args[2], args[3]
    sni = args[4] if sep > 4 else None
    commands = args[sep + 1:]
    out = {"greeting": None, "cert_sha256": None, "replies": []}
    if mode == "plain":
        p = poplib.POP3(host, port, timeout=20)
        out["greeting"] = p.getwelcome().decode()
    elif mode == "tls":
        p = poplib.POP3_SSL(host, port, timeout=20, context=context(cafile, sni)) if not sni else None
        if sni:
            raw = socket.create_connection((host, port), timeout=20)
            p = poplib.POP3.__new__(poplib.POP3)
            p.host, p.port, p._tls_established = host, port, True
            p.sock = context(cafile, sni).wrap_socket(raw, server_hostname=sni)
            p.file = p.sock.makefile("rb")
            p._debugging = 0
            p.welcome = p._getresp()
        out["greeting"] = p.getwelcome().decode()
        out["cert_sha256"] = fingerprint(p.sock)
    elif mode == "stls":
        p = poplib.POP3(host, port, timeout=20)
        out["greeting"] = p.getwelcome().decode()
        p.stls(context=context(cafile, sni))
        out["cert_sha256"] = fingerprint(p.sock)
    elif mode == "inject":
        raw = socket.create_connection((host, port), timeout=20)
        f = raw.makefile("rb")
        out["greeting"] = f.readline().decode().rstrip("\r\n")
        raw.sendall(b"STLS\r\n" + commands[0].encode() + b"\r\n")
        out["replies"].append([f.readline().decode().rstrip("\r\n"), None])
        tls = context(cafile, sni).wrap_socket(raw, server_hostname=sni)
        p = poplib.POP3.__new__(poplib.POP3)
        p.host, p.port, p._tls_established = host, port, True
        p.sock = tls
        p.file = tls.makefile("rb")
        p._debugging = 0
        out["cert_sha256"] = fingerprint(tls)
        commands = commands[1:]
    else:
        raise SystemExit("unknown mode " + mode)
    out["replies"] += run(p, commands)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
