package peertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// The AWS stand-ins check signatures the way AWS does: they recompute the SigV4 signature of
// the request they received with the secret they know, using the SDK's own signer over the
// headers the client signed, and compare. A client holding the wrong secret (or signing for
// the wrong service) is refused with the service's own error code.

var sigV4RE = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$`)

// errUnknownKey is a request signed with an access key the stand-in does not know.
var errUnknownKey = errors.New("unknown access key")

// verifySigV4 recomputes r's signature (body is its payload) for service with the given
// credentials. The credential scope must name region: AWS refuses a signature scoped to
// another region (EC2 and Auto Scaling: the endpoint's own; Route 53, a global service in the
// aws partition: us-east-1 whatever endpoint is used).
func verifySigV4(r *http.Request, body []byte, service, region, access, secret string) error {
	m := sigV4RE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		return fmt.Errorf("no SigV4 authorization: %q", r.Header.Get("Authorization"))
	}
	if m[4] != service {
		return fmt.Errorf("signed for service %s, not %s", m[4], service)
	}
	if m[1] != access {
		return fmt.Errorf("%w %s", errUnknownKey, m[1])
	}
	if m[3] != region {
		return fmt.Errorf("signed for region %s, not %s", m[3], region)
	}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("bad X-Amz-Date: %v", err)
	}
	req, _ := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	for _, h := range strings.Split(m[5], ";") {
		if h != "host" {
			req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: access, SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), service, m[3], at)
	if err != nil {
		return err
	}
	if req.Header.Get("Authorization") != r.Header.Get("Authorization") {
		return errors.New("signature mismatch")
	}
	return nil
}
