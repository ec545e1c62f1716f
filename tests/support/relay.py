"""TCP relays for the deployment test's network namespaces.

Each argument is LISTEN_HOST:LISTEN_PORT:TARGET_HOST:TARGET_PORT. Run in a
node's namespace, it makes the test host's loopback services (the broker,
which advertises 127.0.0.1, and the S3 proxy) answer at the same loopback
address there; run on the test host, it exposes them on the bridge.
Prints "ready" once every listener is bound.
"""

import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def relay(listen_host, listen_port, target_host, target_port):
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, listen_host, listen_port)


async def main():
    servers = []
    for spec in sys.argv[1:]:
        listen_host, listen_port, target_host, target_port = spec.split(":")
        servers.append(await relay(listen_host, int(listen_port), target_host, int(target_port)))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
