// The gradient buckets that overlap the backward: device-agnostic host code, now in
// include/syncbn/grad_buckets.h (src/model/grad_buckets.cpp), shared with the CPU model.
#pragma once

#include "syncbn/grad_buckets.h"

namespace syncbn::cuda::train {

using syncbn::BucketSchedule;
using syncbn::GradBucket;
using syncbn::reverse_buckets;

}  // namespace syncbn::cuda::train
