// pcall over a function with several results (lua-types types only the first).

/** @customName pcall */
declare function protect<A extends any[], R extends any[]>(
  f: (this: void, ...args: A) => LuaMultiReturn<R>,
  ...args: A
): LuaMultiReturn<[true, ...R] | [false, string]>;
