#!/usr/bin/python3
"""Open one HBONE tunnel with another stack: Python's ssl (OpenSSL) and the h2 library.

Proves the server speaks plain HTTP/2 CONNECT over mutual TLS, not a private dialect.
Prints the server's SPIFFE identity on the first line and the echoed bytes on the second.
"""
import argparse
import socket
import ssl

import h2.config
import h2.connection
import h2.events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="host:port of the HBONE listener")
    parser.add_argument("--authority", required=True, help="ip:port the tunnel goes to")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--message", required=True)
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(args.ca)
    context.check_hostname = False  # identities are SPIFFE URI SANs, checked below
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2"])

    host, port = args.server.rsplit(":", 1)
    tls = context.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
    assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
    uris = [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "URI"]

    # Debian's h2 4.1 insists on :path for every request, though RFC 9113 8.5 forbids it
    # on CONNECT; send the RFC's form with outbound validation off.
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "CONNECT"), (":authority", args.authority)])
    tls.sendall(conn.data_to_send())

    status = None
    received = b""
    sent = False
    message = args.message.encode()
    while len(received) < len(message):
        data = tls.recv(65536)
        if not data:
            raise SystemExit("connection closed before the echo arrived")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
                if status != b"200":
                    raise SystemExit(f"CONNECT refused with {status.decode()}")
            elif isinstance(event, h2.events.DataReceived):
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise SystemExit(f"stream reset: {event.error_code}")
        if status == b"200" and not sent:
            conn.send_data(stream, message)
            sent = True
        tls.sendall(conn.data_to_send())

    conn.end_stream(stream)
    tls.sendall(conn.data_to_send())
    print(",".join(uris))
    print(received.decode())


if __name__ == "__main__":
    main()
