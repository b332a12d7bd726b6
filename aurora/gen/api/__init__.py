__all__ = ['ttypes', 'constants', 'ReadOnlyScheduler', 'AuroraSchedulerManager']
