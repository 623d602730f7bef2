# Plots of `make compare` for docs/BENCHMARKS.md. compare.py writes the data files
# (one row per proxy: "name" values... light-colour dark-colour) and runs
#   gnuplot -e "dir='DATA'; out='IMG'; subtitle='...'; have_throughput=1; ..." plots.gp
# Bars: orange = zcio, grey = no proxy, green = the floor (floor.c, a yardstick),
# blue = the other proxies; light = the first series, dark = the second.

if (!exists("dir")) dir = "."
if (!exists("out")) out = "."
if (!exists("subtitle")) subtitle = ""

set encoding utf8
set terminal pngcairo size 1000,540 font "DejaVu Sans,10" noenhanced
set style fill solid 0.95 border rgb "#404040"
set grid ytics lc rgb "#e0e0e0" lt 1
set xtics rotate by -25 scale 0 nomirror font ",10"
set ytics nomirror
set border 3 lc rgb "#404040"
# The key sits in one row between the title and the plot, where no bar can be.
set key at graph 0.5, graph 1.0 center bottom horizontal box lc rgb "#cccccc" samplen 2 width 1
set tmargin 5.5
# Short numbers on the bars: 950, 9.5k, 95k.
k(x) = x >= 9999.5 ? sprintf("%.0fk", x / 1000) : x >= 999.5 ? sprintf("%.1fk", x / 1000) : sprintf("%.0f", x)
set bmargin 6
w = 0.38

# ---------------------------------------------------------------- throughput
if (exists("have_throughput")) {
    f = dir."/throughput.dat"
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 2 nooutput
    n = STATS_records
    set xrange [-0.6:n-0.4]
    set yrange [0:*]
    set offsets 0, 0, graph 0.08, 0
    set output out."/compare-throughput.png"
    set title "Throughput through each proxy (iperf3 on loopback): Gbit/s, label = × no proxy\n".subtitle
    set ylabel "Gbit/s (higher is better)"
    plot f using ($0-w/2):2:(w):6 with boxes lc rgb variable notitle, \
         f using ($0+w/2):3:(w):7 with boxes lc rgb variable notitle, \
         f using ($0-w/2):2:(sprintf("%.2f×", $4)) with labels center offset 0,0.7 font ",8" notitle, \
         f using ($0+w/2):3:(sprintf("%.2f×", $5)) with labels center offset 0,0.7 font ",8" notitle, \
         f using 0:(NaN):xtic(1) notitle, \
         NaN with boxes fc rgb "#c8c8c8" title "1 stream", \
         NaN with boxes fc rgb "#606060" title "4 streams"

    # ------------------------------------------------------------ CPU per GB
    f = dir."/cpu.dat"
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 2 nooutput
    n = STATS_records
    set xrange [-0.6:n-0.4]
    set output out."/compare-cpu.png"
    set title "Proxy CPU seconds per GB moved (user + system, all threads)\n".subtitle
    set ylabel "CPU s/GB (lower is better)"
    set arrow 1 from graph 0, first 0.15 to graph 1, first 0.15 nohead dt 2 lc rgb "#d62728" front
    set label 1 "target 0.15" at graph 0.005, first 0.15 offset 0,0.6 tc rgb "#d62728" font ",8" front
    plot f using ($0-w/2):2:(w):4 with boxes lc rgb variable notitle, \
         f using ($0+w/2):3:(w):5 with boxes lc rgb variable notitle, \
         f using ($0-w/2):2:(sprintf("%.2f", $2)) with labels center offset 0,0.7 font ",8" notitle, \
         f using ($0+w/2):3:(sprintf("%.2f", $3)) with labels center offset 0,0.7 font ",8" notitle, \
         f using 0:(NaN):xtic(1) notitle, \
         NaN with boxes fc rgb "#c8c8c8" title "1 stream", \
         NaN with boxes fc rgb "#606060" title "4 streams"
    unset arrow 1
    unset label 1
}

# ------------------------------------------------------------------- latency
if (exists("have_latency")) {
    f = dir."/latency.dat"
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 3 nooutput
    n = STATS_records
    top = STATS_max * 2.5
    set xrange [-0.6:n-0.4]
    set logscale y
    set yrange [5:top]
    set offsets 0, 0, 0, 0
    set output out."/compare-latency.png"
    set title "Ping-pong round trip through each proxy (sockperf, 64-byte messages), log scale\n".subtitle
    set ylabel "µs (lower is better)"
    plot f using ($0-w/2):2:(w):4 with boxes lc rgb variable notitle, \
         f using ($0+w/2):3:(w):5 with boxes lc rgb variable notitle, \
         f using ($0-w/2):2:(k($2)) with labels center offset 0,0.7 font ",8" notitle, \
         f using ($0+w/2):3:(k($3)) with labels center offset 0,0.7 font ",8" notitle, \
         f using 0:(NaN):xtic(1) notitle, \
         NaN with boxes fc rgb "#c8c8c8" title "p50", \
         NaN with boxes fc rgb "#606060" title "p99"
    unset logscale y
}

# --------------------------------------------------------- connections per s
if (exists("have_cps")) {
    f = dir."/cps.dat"
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 2 nooutput
    n = STATS_records
    set xrange [-0.6:n-0.4]
    set yrange [0:*]
    set offsets 0, 0, graph 0.08, 0
    set output out."/compare-cps.png"
    set title "New connections per second (connect, 64 B request, 64 B reply, close), label = × no proxy\n".subtitle
    set ylabel "connections/s (higher is better)"
    unset key
    plot f using 0:2:(0.6):5 with boxes lc rgb variable notitle, \
         f using 0:2:(sprintf("%s (%.2f×)", k($2), $3)) with labels center offset 0,0.7 font ",8" notitle, \
         f using 0:(NaN):xtic(1) notitle
    set key
}

# ---------------------------------------------------------------------- idle
if (exists("have_idle")) {
    f = dir."/idle.dat"
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 2 nooutput
    n = STATS_records
    top = STATS_max
    set autoscale  # stats skips points outside the ranges the last plot set
    stats f using 3 nooutput
    top = (STATS_max > top ? STATS_max : top) * 2.5
    set xrange [-0.6:n-0.4]
    set logscale y
    set yrange [100:top]
    set offsets 0, 0, 0, 0
    set output out."/compare-idle.png"
    set title "Memory per idle connection (log scale): the proxy's own (PSS) and its kernel share\n".subtitle
    set ylabel "bytes per connection (lower is better)"
    set arrow 1 from graph 0, first 512 to graph 1, first 512 nohead dt 2 lc rgb "#d62728" front
    set label 1 "target 512 B (proxy memory)" at graph 0.005, first 512 offset 0,0.6 tc rgb "#d62728" font ",8" front
    plot f using ($0-w/2):2:(w):5 with boxes lc rgb variable notitle, \
         f using ($0+w/2):3:(w):6 with boxes lc rgb variable notitle, \
         f using ($0-w/2):2:(k($2)) with labels center offset 0,0.7 font ",8" notitle, \
         f using ($0+w/2):3:(k($3)) with labels center offset 0,0.7 font ",8" notitle, \
         f using 0:(NaN):xtic(1) notitle, \
         NaN with boxes fc rgb "#c8c8c8" title "proxy memory (PSS), idle", \
         NaN with boxes fc rgb "#606060" title "proxy's kernel memory"
    unset logscale y
}
