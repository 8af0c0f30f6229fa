// An HTTPS client on crypto/tls: N GET requests to BASE/<i>, each with its own traceparent
// (trace id = TRACEPREFIX followed by i as 8 hex digits), from WORKERS goroutines sharing one
// http.Client. PROTO is "h2" (negotiated by ALPN, Go's default) or "h1" (HTTP/1.1 only).
// It first waits for a line on stdin, so a test can start it once an agent has looked at it
// after its exec. Prints one line per response: "<i> <status> <proto>".
// Usage: client BASE N WORKERS PROTO TRACEPREFIX
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
)

func main() {
	base := os.Args[1]
	n, _ := strconv.Atoi(os.Args[2])
	workers, _ := strconv.Atoi(os.Args[3])
	proto := os.Args[4]
	prefix := os.Args[5]
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "waiting for the start line:", err)
		os.Exit(2)
	}

	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: proto == "h2",
	}
	if proto == "h1" {
		// A non-nil empty map turns HTTP/2 off.
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: transport}

	jobs := make(chan int)
	var out sync.Mutex
	var wg sync.WaitGroup
	failed := false
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				req, _ := http.NewRequest("GET", fmt.Sprintf("%s/%d", base, i), nil)
				req.Header.Set("traceparent", fmt.Sprintf("00-%s%08x-00f067aa0ba902b7-01", prefix, i))
				resp, err := client.Do(req)
				out.Lock()
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					failed = true
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					fmt.Println(i, resp.StatusCode, resp.Proto)
				}
				out.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if failed {
		os.Exit(1)
	}
}
