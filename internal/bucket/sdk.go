package bucket

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// SDKConfig is the one way haagent loads the AWS SDK's configuration (S3, Auto Scaling, EC2,
// Route 53): the SDK's default chain for credentials and region, with a region or credentials
// given in the config (or by a test) first, over an HTTP client that honours the proxy rules of
// ProxyFunc. what names the service for the error ("Auto Scaling").
func SDKConfig(ctx context.Context, hc *awshttp.BuildableClient, region string, creds aws.CredentialsProvider, what string) (aws.Config, error) {
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithHTTPClient(hc)}
	if region != "" {
		opts = append(opts, awsconfig.WithRegion(region))
	}
	if creds != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(creds))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the AWS SDK configuration for %s: %w", what, err)
	}
	return cfg, nil
}

// apiCallTimeout bounds one control-plane call (the SDK retries within its own attempts).
const apiCallTimeout = 30 * time.Second

// APIHTTPClient is the HTTP client of the control-plane APIs (Auto Scaling, EC2, Route 53):
// each call bounded, through the same proxy rules as S3.
func APIHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTimeout(apiCallTimeout).WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = ProxyFunc()
	})
}
