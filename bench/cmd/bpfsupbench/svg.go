package main

import (
	"fmt"
	"math"
	"strings"
)

// readyChart draws restart-to-ready time against program count, one panel
// per program kind, log-log: a line through the medians of each method and
// a bar from the fastest to the slowest repetition.
func readyChart(rows []ReadyRow) string {
	const (
		panelW, panelH = 420.0, 330.0
		left, top      = 70.0, 80.0
		gap            = 90.0
		width          = left + 2*panelW + gap + 30
		height         = top + panelH + 110
	)
	colors := map[string]string{
		"bpfsup-adopt": "#1b9e77", "bpfsup-load": "#d95f02", "bpftool": "#7570b3", "xdp-loader": "#e7298a",
	}
	labels := map[string]string{
		"bpfsup-adopt": "bpfsup, pins in place (adopt)", "bpfsup-load": "bpfsup from nothing (load)",
		"bpftool": "bpftool loadall + batch of net attach", "xdp-loader": "xdp-loader load, per interface",
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="24" font-size="16" font-weight="bold">Restart-to-ready: programs attached and the child running</text>`+"\n", left)
	fmt.Fprintf(&b, `<text x="%.0f" y="42" fill="#555">median of the repetitions, bar from fastest to slowest; both axes logarithmic</text>`+"\n", left)
	if len(rows) == 0 {
		b.WriteString(`<text x="70" y="120">no data</text></svg>` + "\n")
		return b.String()
	}

	// One y range for both panels, in whole decades.
	lo, hi := math.Inf(1), math.Inf(-1)
	counts := map[int]bool{}
	for _, r := range rows {
		if r.Stats.N == 0 {
			continue
		}
		lo, hi = math.Min(lo, r.Stats.Min), math.Max(hi, r.Stats.Max)
		counts[r.Programs] = true
	}
	if math.IsInf(lo, 1) {
		b.WriteString(`<text x="70" y="120">no data</text></svg>` + "\n")
		return b.String()
	}
	yLo, yHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if yHi == yLo {
		yHi++
	}
	xMax := 0.0
	for n := range counts {
		xMax = math.Max(xMax, math.Log10(float64(n)))
	}
	if xMax == 0 {
		xMax = 1
	}
	const pad = 30.0 // keep points off the panel's edges

	for pi, kind := range []string{"small", "heavy"} {
		x0 := left + float64(pi)*(panelW+gap)
		xpos := func(n int) float64 { return x0 + pad + (panelW-2*pad)*math.Log10(float64(n))/xMax }
		ypos := func(v float64) float64 {
			return top + panelH - panelH*(math.Log10(math.Max(v, 1e-9))-yLo)/(yHi-yLo)
		}
		title := "small program (counter)"
		if kind == "heavy" {
			title = "verifier-heavy program (~470k insns each)"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-weight="bold" text-anchor="middle">%s</text>`+"\n", x0+panelW/2, top-8, title)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`+"\n", x0, top, panelW, panelH)
		for d := yLo; d <= yHi; d++ {
			y := ypos(math.Pow(10, d))
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+panelW, y)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#333">%s</text>`+"\n", x0-6, y+4, decadeLabel(d))
		}
		for n := range counts {
			x := xpos(n)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x, top, x, top+panelH)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#333">%d</text>`+"\n", x, top+panelH+16, n)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">programs (one object, one interface each)</text>`+"\n", x0+panelW/2, top+panelH+34)
		if pi == 0 {
			fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">time to ready</text>`+"\n", top+panelH/2)
		}
		for mi, m := range readyMethods {
			var pts []string
			// Offset the methods a little so that their bars do not overlap.
			dx := (float64(mi) - 1.5) * 4
			for _, r := range rows {
				if r.Kind != kind || r.Method != m || r.Stats.N == 0 {
					continue
				}
				x := xpos(r.Programs) + dx
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, ypos(r.Stats.Median)))
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`+"\n",
					x, ypos(r.Stats.Min), x, ypos(r.Stats.Max), colors[m])
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s, %d programs: median %s ms (%s..%s)</title></circle>`+"\n",
					x, ypos(r.Stats.Median), colors[m], labels[m], r.Programs, fmtMs(r.Stats.Median), fmtMs(r.Stats.Min), fmtMs(r.Stats.Max))
			}
			width := "1.5"
			if strings.HasPrefix(m, "bpfsup") {
				width = "2.5"
			}
			if len(pts) > 1 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="%s"/>`+"\n", strings.Join(pts, " "), colors[m], width)
			}
		}
	}
	// Legend, below the panels.
	ly := top + panelH + 60
	for i, m := range readyMethods {
		x := left + float64(i%2)*(panelW+gap)
		y := ly + float64(i/2)*20
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", x, y-4, x+24, y-4, colors[m])
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x+30, y, labels[m])
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func decadeLabel(d float64) string {
	v := math.Pow(10, d)
	switch {
	case v >= 1000:
		return fmt.Sprintf("%g s", v/1000)
	case v >= 1:
		return fmt.Sprintf("%g ms", v)
	default:
		return fmt.Sprintf("%g µs", v*1000)
	}
}
