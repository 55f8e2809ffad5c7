"""Websocket relay in the style of the Lab Orchestrator prototype (WebsocketProxyLib 1.0.0).

Same design as the deployed prototype: `websockets` (legacy asyncio API), path
`/<JWT>/<vmi_name>`, an HS256 JWT verified with PyJWT on every connection, the namespace
and allowed VMI names taken from the token's `lab_instance` claim, a fresh upstream
websocket per session with the service-account token read from its file, and two relay
tasks copying messages verbatim. One deliberate difference: when either direction ends,
the other task is cancelled (the prototype awaited both, leaking the upstream session),
so repeated benchmark runs do not pile up stale upstream connections.
Prints {"port": N} on stdout once listening.
"""

import argparse
import asyncio
import json
import logging
import sys

import jwt
import websockets

API_PATH = "/apis/subresources.kubevirt.io/v1alpha3/namespaces/{namespace}/virtualmachineinstances/{vmi}/vnc"


class WebsocketProxy:
    def __init__(self, secret_key, remote_url, token_file):
        self.secret_key = secret_key
        self.remote_url = remote_url
        self.token_file = token_file

    def verify_token(self, token, vmi_name):
        try:
            claims = jwt.decode(token, self.secret_key, algorithms=["HS256"])
        except Exception:
            return None
        lab_instance = claims.get("lab_instance") or {}
        if vmi_name not in lab_instance.get("allowed_vmi_names", []):
            return None
        return lab_instance

    async def relay(self, source, destination):
        async for message in source:
            await destination.send(message)

    async def proxy(self, websocket, path):
        parts = path.split("/")
        if len(parts) != 3:
            await websocket.close(reason="invalid url")
            return
        token, vmi_name = parts[1], parts[2]
        lab_instance = self.verify_token(token, vmi_name)
        if lab_instance is None:
            await websocket.close(reason="invalid token")
            return
        url = self.remote_url + API_PATH.format(namespace=lab_instance["namespace_name"], vmi=vmi_name)
        with open(self.token_file) as f:
            sa_token = f.read()
        headers = {"Authorization": f"Bearer {sa_token}"}
        async with websockets.connect(url, extra_headers=headers) as remote:
            to_remote = asyncio.create_task(self.relay(websocket, remote))
            to_client = asyncio.create_task(self.relay(remote, websocket))
            done, pending = await asyncio.wait({to_remote, to_client}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--remote-url", required=True, help="e.g. ws://127.0.0.1:8001")
    parser.add_argument("--token-file", required=True)
    args = parser.parse_args()
    with open(args.secret_file, "rb") as f:
        secret = f.read()
    logging.basicConfig(level=logging.WARNING)
    proxy = WebsocketProxy(secret, args.remote_url, args.token_file)
    async with websockets.serve(proxy.proxy, args.host, args.port) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
