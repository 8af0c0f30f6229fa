// An HTTPS server on crypto/tls (HTTP/2 by ALPN, or HTTP/1.1): answers every path with 200
// and the path. Usage: server PORT CERT KEY.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, r.URL.Path)
	})
	err := http.ListenAndServeTLS("127.0.0.1:"+os.Args[1], os.Args[2], os.Args[3], nil)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
