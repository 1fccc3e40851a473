# gdb script for cross/link-order.sh: records which functions a process calls, natively.
#
#   FIRST_CALLS_SYMBOLS=FILE FIRST_CALLS_OUT=FILE FIRST_CALLS_PID=FILE \
#       gdb -batch -x cross/first-calls.py --args BINARY ARGS...
#
# FIRST_CALLS_SYMBOLS lists the binary's functions, "ADDRESS<TAB>SYMBOL" as nm prints them
# (unrelocated). Every one gets a breakpoint; the first hit records the symbol and removes the
# breakpoint, so each function costs one stop however often it runs. FIRST_CALLS_PID receives
# the process's pid (to signal it), FIRST_CALLS_OUT the symbols in the order first called.
#
# Why not callgrind, as for traffic: valgrind's virtual CPU lacks ADX, SHA-NI, VAES and
# VPCLMULQDQ, so under it ring picks other code than it runs on real hardware, and its 50x
# slowdown changes which of two racing paths (a connect done at once, a timer) runs. For the
# few processes whose first moments decide idle memory, a native run is what is wanted.
import os

import gdb

gdb.execute("set pagination off")
gdb.execute("set confirm off")
# Without this gdb removes and reinserts every breakpoint at each stop: thousands of writes.
gdb.execute("set breakpoint always-inserted on")
gdb.execute("set print thread-events off")
gdb.execute("handle all nostop noprint pass")
gdb.execute("handle SIGTRAP stop noprint nopass")
gdb.execute("starti")

pid = gdb.selected_inferior().pid
with open(os.environ["FIRST_CALLS_PID"], "w") as f:
    f.write(f"{pid}\n")

# A static PIE: symbols are relative to where its first mapping was loaded.
exe = os.path.realpath(f"/proc/{pid}/exe")
base = None
with open(f"/proc/{pid}/maps") as maps:
    for line in maps:
        fields = line.split()
        if len(fields) >= 6 and fields[5] == exe and int(fields[2], 16) == 0:
            base = int(fields[0].split("-")[0], 16)
            break
if base is None:
    raise SystemExit(f"first-calls: {exe} is not mapped in process {pid}")

symbols = {}
with open(os.environ["FIRST_CALLS_SYMBOLS"]) as f:
    for line in f:
        address, symbol = line.rstrip("\n").split("\t", 1)
        symbols.setdefault(base + int(address, 16), symbol)

breakpoints = {}
for address in symbols:
    bp = gdb.Breakpoint(f"*{address:#x}", internal=True)
    bp.silent = True
    breakpoints[address] = bp

# starti left the process on its entry point (`_start`): that call is already made.
called = []
entry = int(gdb.parse_and_eval("$pc"))
if entry in breakpoints:
    called.append(symbols[entry])
    breakpoints.pop(entry).delete()
while True:
    try:
        gdb.execute("continue", to_string=True)
        pc = int(gdb.parse_and_eval("$pc"))
    except gdb.error:  # the process has exited
        break
    bp = breakpoints.pop(pc, None)
    if bp is not None:
        called.append(symbols[pc])
        bp.delete()

with open(os.environ["FIRST_CALLS_OUT"], "w") as f:
    f.write("".join(f"{symbol}\n" for symbol in called))
