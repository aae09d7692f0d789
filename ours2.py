import sys, time, os, resource
sys.path.insert(0, '/work/issue-13')
from vma_client_stubs.agent.copier import DiskCopier, Plan
from vma_client_stubs.agent.extents import allocated_extents
uri = sys.argv[1]; src = '/tmp/h13x/src.img'
kw = {k: int(v) for k, v in (a.split('=') for a in sys.argv[2:])}
plan = Plan.full(allocated_extents(src), os.path.getsize(src), fresh_target=True)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
DiskCopier(src, uri, plan, fresh_target=True, **kw).run()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print('ours', kw, 'wall', round(time.perf_counter()-t0, 2), 'cpu user', round(r1.ru_utime-r0.ru_utime,2), 'sys', round(r1.ru_stime-r0.ru_stime,2))
