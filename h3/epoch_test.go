package h3

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/udppool/udppool/udppooltest"
)

// TestGoAwayHeadStart: the response of the request that woke a waiting
// GOAWAY, or that a GOAWAY found in the handler, is kept back until the
// GOAWAY has had its lead, so that the client reads the GOAWAY first and
// sends its next request on a new connection; without a GOAWAY nothing is
// kept back. The reload tests count the rejections a missing head start
// causes but cannot tell them from the odd one that remains; this test
// runs the handler in fake time (testing/synctest) and asserts the order
// of events, never a duration.
func TestGoAwayHeadStart(t *testing.T) {
	qc := udppooltest.QUICPair(t).Server // its RTT sets the lead
	for _, c := range []struct {
		name       string
		waiting    bool // a GOAWAY waits for the next request
		sentDuring bool // a GOAWAY goes out while the request is in the handler
		held       bool
	}{
		{"request wakes the GOAWAY", true, false, true},
		{"GOAWAY during the request", false, true, true},
		{"no GOAWAY", false, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cn := &conn{qc: qc}
				var wake chan struct{}
				if c.waiting {
					wake = make(chan struct{})
					cn.wake = wake
				}
				h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
					if c.sentDuring {
						cn.mu.Lock()
						cn.goAwayAt = time.Now()
						cn.mu.Unlock()
					}
				})
				done := make(chan struct{})
				go func() {
					defer close(done)
					cn.handle(h, httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
				}()
				synctest.Wait()
				if wake != nil {
					select {
					case <-wake:
					default:
						t.Error("the request did not wake the waiting GOAWAY")
					}
				}
				// Before the least lead has passed, the response must
				// still be held; afterwards it must be complete.
				time.Sleep(minGoAwayLead / 2)
				synctest.Wait()
				select {
				case <-done:
					if c.held {
						t.Fatal("the response was not kept back for the GOAWAY's head start")
					}
					return
				default:
					if !c.held {
						t.Fatal("the response was kept back without a GOAWAY")
					}
				}
				time.Sleep(time.Second) // far past any loopback RTT
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatal("the response is still kept back after the GOAWAY's lead")
				}
			})
		})
	}
}
