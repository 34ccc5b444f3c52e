#!/bin/bash
# LocalStack init hook (ready.d): create the worker's queue and its dead-letter queue.
#
# LocalStack runs the executable scripts in /etc/localstack/init/ready.d once it serves requests;
# compose.yaml mounts this directory there, and the worker starts only after this script succeeded
# (the healthcheck asks /_localstack/init/ready). `awslocal` is the AWS CLI aimed at LocalStack.
# The names follow qworker's embedded server: `<queue>` with `<queue>-dlq` and a redrive policy.
set -euo pipefail

queue="${QWORKER_QUEUE_NAME:-orders}"
max_receive_count="${QWORKER_MAX_RECEIVE_COUNT:-3}"

dlq_url=$(awslocal sqs create-queue --queue-name "${queue}-dlq" \
    --attributes MessageRetentionPeriod=1209600 --query QueueUrl --output text)
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$dlq_url" \
    --attribute-names QueueArn --query Attributes.QueueArn --output text)
redrive=$(printf '{"deadLetterTargetArn":"%s","maxReceiveCount":"%s"}' "$dlq_arn" "$max_receive_count")
attributes=$(printf '{"VisibilityTimeout":"30","RedrivePolicy":%s}' \
    "$(printf '%s' "$redrive" | sed 's/"/\\"/g; s/.*/"&"/')")
awslocal sqs create-queue --queue-name "$queue" --attributes "$attributes" >/dev/null

echo "qworker: queue ${queue} with dead-letter queue ${queue}-dlq (maxReceiveCount ${max_receive_count})"
