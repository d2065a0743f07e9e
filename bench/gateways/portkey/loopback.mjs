// Preloaded with `node --import` so Portkey's gateway, which listens on every interface, binds
// 127.0.0.1 only: a listen() on a port without a host gets the loopback address.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  if (typeof port === "number" && host === undefined) {
    host = "127.0.0.1";
  }
  return listen.call(this, port, host, ...rest);
};
