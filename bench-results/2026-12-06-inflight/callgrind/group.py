# Groups callgrind_annotate's lines by function (inline files merged).
import re, sys, subprocess, collections
f, incl = sys.argv[1], sys.argv[2] == "incl"
out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", f"--inclusive={'yes' if incl else 'no'}", f],
                     capture_output=True, text=True).stdout
tot = None; g = collections.Counter()
for line in out.splitlines():
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
    if not m: continue
    n = int(m.group(1).replace(",", "")); name = m.group(2)
    if "PROGRAM TOTALS" in name: tot = n; continue
    name = re.sub(r" \[[^\]]*\]$", "", name)
    name = name.split(":", 1)[1] if re.match(r"^[^ ]*\.(h|rs|c|cc|S|cpp|hpp)?:|^\?\?\?:|^[./][^ :]*:", name) else name
    if incl: g[name] = max(g[name], n)
    else: g[name] += n
deliv = float(sys.argv[3])
for name, n in g.most_common(int(sys.argv[4]) if len(sys.argv) > 4 else 40):
    print(f"{n/deliv:8.1f} Ir/del {100*n/tot:5.1f}%  {name[:170]}")
