package detect

import (
	"math"
	"time"
)

// Baseline is a robust moving estimate of a per-minute quantity (requests,
// response bytes) with hour-of-week seasonality. Each minute's value
// updates three estimates: the slot of its hour of the week (168 slots),
// the slot of its hour of the day (24), and a global one. Expected reads
// the most specific estimate that has seen enough minutes: the
// hour-of-week slot once it has data from at least minSlotMinutes
// minutes (half an hour of that hour, so from the second week on), else
// the hour-of-day slot (from the second day on), else the global one
// once it has seen a whole day.
//
// Each estimate is an exponentially weighted mean and mean absolute
// deviation whose updates are clipped (a Huber-style step): a value
// further than clipDevs deviations from the mean moves it only as far as
// that bound, so a burst — the attack the detectors look for — barely
// shifts the baseline it is judged against, while a real change in load
// is learned over hours. The zero value is an empty baseline.
type Baseline struct {
	week [168]estimate
	day  [24]estimate
	all  estimate
}

// estimate keeps its mean and deviation as float32: 12 bytes instead of
// 24, so an edge's two baselines (193 estimates each) take 4.6 KiB, not
// 9 KiB. The arithmetic is done in float64; a float32 keeps 7 digits,
// far finer than the deviations the detectors judge by.
type estimate struct {
	mean, dev float32
	n         uint32
}

const (
	// minSlotMinutes is how many minutes a seasonal slot must have seen
	// before Expected uses it.
	minSlotMinutes = 30
	// minGlobalMinutes is how many minutes the global estimate needs: a
	// whole day, so that the first morning's rise is not judged against
	// the night before it.
	minGlobalMinutes = 1440
	// clipDevs bounds an update: values beyond mean ± clipDevs·dev count
	// as that bound.
	clipDevs = 4
	// Windows of the moving averages, in minutes: the weight of a new
	// value is 1/min(n+1, window).
	weekWindow = 240  // 4 weeks of one hour of the week
	dayWindow  = 420  // a week of one hour of the day
	allWindow  = 1440 // a day
)

func (e *estimate) update(x float64, window uint32) {
	if e.n == 0 {
		e.mean, e.dev, e.n = float32(x), 0, 1
		return
	}
	mean, dev := float64(e.mean), float64(e.dev)
	// The deviation is floored so that a perfectly flat history (dev 0)
	// does not clip every later value to the mean.
	d := max(dev, 1, 0.1*mean)
	c := min(max(x, mean-clipDevs*d), mean+clipDevs*d)
	w := 1 / float64(min(e.n+1, window))
	e.dev = float32(dev + w*(math.Abs(c-mean)-dev))
	e.mean = float32(mean + w*(c-mean))
	if e.n < math.MaxUint32 {
		e.n++
	}
}

// hourOfWeek is the slot of t: hours since Monday 00:00 UTC.
func hourOfWeek(t time.Time) int {
	t = t.UTC()
	wd := (int(t.Weekday()) + 6) % 7 // Monday 0
	return wd*24 + t.Hour()
}

// Update adds the value of the minute starting at t.
func (b *Baseline) Update(t time.Time, x float64) {
	h := hourOfWeek(t)
	b.week[h].update(x, weekWindow)
	b.day[h%24].update(x, dayWindow)
	b.all.update(x, allWindow)
}

// Expected returns the estimate for the minute starting at t: its mean and
// mean absolute deviation, and false while the baseline has seen too
// little to judge by.
func (b *Baseline) Expected(t time.Time) (mean, dev float64, ok bool) {
	h := hourOfWeek(t)
	switch {
	case b.week[h].n >= minSlotMinutes:
		return float64(b.week[h].mean), float64(b.week[h].dev), true
	case b.day[h%24].n >= minSlotMinutes:
		return float64(b.day[h%24].mean), float64(b.day[h%24].dev), true
	case b.all.n >= minGlobalMinutes:
		return float64(b.all.mean), float64(b.all.dev), true
	}
	return 0, 0, false
}

// Minutes is how many minutes the baseline has seen.
func (b *Baseline) Minutes() int { return int(b.all.n) }
