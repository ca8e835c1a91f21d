"""A small authoritative DNS server for tests: answers from a dict over UDP and TCP on a
loopback port, so code under test resolves through the real resolver path
(A3_DNS_NAMESERVERS) instead of a mocked function."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset


class Zone:
    """Records by (owner name, type); names are absolute, case-insensitive."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()  # names that answer SERVFAIL
        self.lock = threading.Lock()

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def add(self, name: str, rdtype: str, *values: str) -> None:
        with self.lock:
            self.records.setdefault((self._key(name), rdtype.upper()), []).extend(values)

    def set(self, name: str, rdtype: str, *values: str) -> None:
        with self.lock:
            self.records[(self._key(name), rdtype.upper())] = list(values)

    def remove(self, name: str, rdtype: str) -> None:
        with self.lock:
            self.records.pop((self._key(name), rdtype.upper()), None)

    def txt(self, name: str, text: str) -> None:
        """Add a TXT record, split into 255-octet strings as DNS requires."""
        chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
        self.add(name, "TXT", " ".join('"' + chunk.replace('"', '\\"') + '"' for chunk in chunks))

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self.lock:
            if name.rstrip(".") in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            values = self.records.get((name, rdtype))
            exists = any(owner == name for owner, _ in self.records)
        if values:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *values))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response


class DnsServer:
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        zone_ref = zone

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                response = zone_ref.answer(dns.message.from_wire(data))
                sock.sendto(response.to_wire(), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                header = self.request.recv(2)
                if len(header) < 2:
                    return
                (length,) = struct.unpack("!H", header)
                data = b""
                while len(data) < length:
                    chunk = self.request.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                wire = zone_ref.answer(dns.message.from_wire(data)).to_wire()
                self.request.sendall(struct.pack("!H", len(wire)) + wire)

        # One port number for both UDP and TCP: the UDP port is free by construction, the
        # same TCP port may not be (busy machine), so try a few.
        for _attempt in range(50):
            self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
            self.port = self.udp.server_address[1]
            self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Tcp, bind_and_activate=False)
            self.tcp.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.socket.bind(("127.0.0.1", self.port))
            except OSError:
                self.tcp.socket.close()
                self.udp.server_close()
                continue
            self.tcp.server_activate()
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        self.threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            for server in (self.udp, self.tcp)
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()
