/*
 * outcome.c - the helpers of outcome.h: they only fill the struct. See reply.c for the bytes.
 */
#include "core/outcome.h"

#include <stdarg.h>
#include <stdio.h>

#include "base/svc_assert.h"

void outcome_problem(struct outcome *o, int err, const char *detail_format, ...)
{
    SVC_ASSERT(err < 0);
    o->kind = OUTCOME_PROBLEM;
    o->problem.err = err;
    o->problem.detail[0] = '\0';
    o->problem.extra_key = NULL;
    o->problem.extra_value = 0;
    if (detail_format != NULL) {
        va_list args;
        va_start(args, detail_format);
        vsnprintf(o->problem.detail, sizeof o->problem.detail, detail_format, args);
        va_end(args);
    }
    SVC_ASSERT(o->kind == OUTCOME_PROBLEM);
}

void outcome_problem_extra(struct outcome *o, const char *key, int64_t value)
{
    SVC_ASSERT(o->kind == OUTCOME_PROBLEM);
    SVC_ASSERT(key != NULL);
    o->problem.extra_key = key;
    o->problem.extra_value = value;
}
