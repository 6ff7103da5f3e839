// Checks that dist/connect-haproxy.lua is one self-contained file that Lua 5.3
// and 5.4 accept (HAProxy 2.6 on Debian 12 embeds 5.3, 3.x builds 5.4): every
// require() names a module bundled in the file itself, and `luac5.3 -p` and
// `luac5.4 -p` parse it.
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

const bundlePath = new URL("../dist/connect-haproxy.lua", import.meta.url).pathname;
const source = readFileSync(bundlePath, "utf8");

const bundled = new Set([...source.matchAll(/^\["([^"]+)"\] = function\(\.\.\.\)/gm)].map((m) => m[1]));
const required = new Set([...source.matchAll(/\brequire\("([^"]+)"/g)].map((m) => m[1]));
const outside = [...required].filter((name) => !bundled.has(name));
if (outside.length > 0) {
  console.error(`check-lua-bundle: ${bundlePath} requires modules it does not contain: ${outside.join(", ")}`);
  process.exit(1);
}
for (const luac of ["luac5.3", "luac5.4"]) {
  try {
    execFileSync(luac, ["-p", bundlePath], { stdio: ["ignore", "inherit", "inherit"] });
  } catch {
    console.error(`check-lua-bundle: ${luac} -p rejected ${bundlePath}`);
    process.exit(1);
  }
}
console.log(`check-lua-bundle: ${bundlePath} is self-contained (${bundled.size} modules) and parses under Lua 5.3 and 5.4`);
