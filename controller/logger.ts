// A small leveled logger, injected everywhere (no module-level state). One line
// per event, `level=... msg=... key=value`, so that operators can grep it.

export type LogLevel = "debug" | "info" | "warn" | "error";
const levelRank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export type LogFields = Record<string, string | number | boolean | undefined>;

export function isLogLevel(value: string): value is LogLevel {
  return value in levelRank;
}

export function createLogger(minimumLevel: LogLevel, write: (line: string) => void, now: () => Date = () => new Date()): Logger {
  const emit = (level: LogLevel, message: string, fields: LogFields = {}) => {
    if (levelRank[level] < levelRank[minimumLevel]) return;
    const extras = Object.entries(fields)
      .filter(([, value]) => value !== undefined)
      .map(([key, value]) => `${key}=${formatValue(String(value))}`)
      .join(" ");
    write(`${now().toISOString()} ${level.toUpperCase().padEnd(5)} ${message}${extras ? ` ${extras}` : ""}\n`);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
  };
}

function formatValue(value: string): string {
  return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
